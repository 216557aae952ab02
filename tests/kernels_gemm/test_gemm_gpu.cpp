// The Hopper INT4 x FP8 GEMM (both kernels) against the CPU reference: every linear shape of
// Llama-2-7B/13B, Llama-3-8B/70B and SmolLM2-135M, ragged M, M = 1, each epilogue, forced kernel /
// split-K / tile configs, fresh random inputs and poisoned outputs. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"
#include "gpu_buffers.h"

namespace fireq::gemm {
namespace {

using fireq::testing::DeviceBuffer;


#define SKIP_WITHOUT_GPU() \
  if (!fireq::testing::gpu_present()) GTEST_SKIP() << "no CUDA device"

constexpr uint16_t kPoison = 0xFFFF;  // BF16 NaN: any element the kernel does not write stays NaN

struct Case {
  std::string name;
  int m, n, k, group;
  Epilogue epilogue;
  int forced_tile = 0;   // 0: the dispatch table
  int forced_splits = 1;
  GemmKernel forced_kernel = GemmKernel::kWgmma;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " M=" << c.m << " N=" << c.n << " K=" << c.k; }

// Weights of the rows the reference checks: all of them for small N, else a random sample of
// output features (for SwiGLU: feature i needs gate row i and up row N/2 + i).
struct Sample {
  std::vector<int> features;
  Int4Weights rows;
};

Sample sample_rows(const Int4Weights& w, bool swiglu, int max_features, std::mt19937& rng) {
  const int features_total = swiglu ? w.n / 2 : w.n;
  Sample s;
  for (int f = 0; f < features_total; ++f) s.features.push_back(f);
  if (features_total > max_features) {
    std::shuffle(s.features.begin(), s.features.end(), rng);
    s.features.resize(max_features);
  }
  std::vector<int> rows;
  for (const int f : s.features) rows.push_back(f);
  if (swiglu)
    for (const int f : s.features) rows.push_back(w.n / 2 + f);
  const int groups = w.k / w.group_size;
  s.rows.n = static_cast<int>(rows.size());
  s.rows.k = w.k;
  s.rows.group_size = w.group_size;
  for (const int r : rows) {
    s.rows.packed.insert(s.rows.packed.end(), w.packed.begin() + static_cast<size_t>(r) * w.k / 2,
                         w.packed.begin() + static_cast<size_t>(r + 1) * w.k / 2);
    s.rows.scales.insert(s.rows.scales.end(), w.scales.begin() + static_cast<size_t>(r) * groups,
                         w.scales.begin() + static_cast<size_t>(r + 1) * groups);
  }
  return s;
}

// A[m][row] = a_scale * s_inv * sum_k |x q| sigma: the magnitude the accumulation error scales with.
std::vector<float> absolute_products(const Fp8Activations& x, const Int4Weights& w, float s_inv) {
  std::vector<float> a(static_cast<size_t>(x.m) * w.n);
  const int groups = w.k / w.group_size;
  for (int r = 0; r < w.n; ++r)
    for (int m = 0; m < x.m; ++m) {
      double sum = 0.0;
      for (int k = 0; k < w.k; ++k)
        sum += std::fabs(fp8_e4m3_to_float(x.values[static_cast<size_t>(m) * w.k + k]) *
                         int4_at(w.packed.data() + static_cast<size_t>(r) * w.k / 2, k)) *
               fp8_e4m3_to_float(w.scales[static_cast<size_t>(r) * groups + k / w.group_size]);
      a[static_cast<size_t>(m) * w.n + r] = static_cast<float>(sum * x.scales[m] * s_inv);
    }
  return a;
}

void run_case(const Case& c) {
  std::mt19937 rng(std::random_device{}());
  const bool swiglu = c.epilogue == Epilogue::kSwiGlu;
  const Int4Weights w = testing::random_int4_weights(c.n, c.k, c.group, rng());
  std::vector<float> x_float(static_cast<size_t>(c.m) * c.k);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x_float) v = normal(rng);
  for (int i = 0; i < c.m; ++i) x_float[static_cast<size_t>(i) * c.k + rng() % c.k] *= 20.0f;  // outliers
  const Fp8Activations x = quantize_fp8_rows(x_float.data(), c.m, c.k);
  const int n_out = swiglu ? c.n / 2 : c.n;
  std::vector<uint16_t> residual(static_cast<size_t>(c.m) * n_out);
  for (auto& r : residual) r = bf16_from_float(normal(rng));
  const float s_inv = 0.125f;

  DeviceBuffer<uint8_t> packed(w.packed), scales(w.scales);
  PreparedWeights prepared;
  prepared.n = c.n;
  prepared.k = c.k;
  prepared.group_size = c.group;
  prepared.swiglu_interleaved = swiglu;
  DeviceBuffer<uint8_t> prepared_data(prepared_weight_bytes(c.n, c.k, c.group));
  prepared_data.fill_bytes(0xA5);
  prepared.data = prepared_data.get();
  prepare_weights(packed.get(), scales.get(), prepared, nullptr);

  DeviceBuffer<uint8_t> x_dev(x.values);
  DeviceBuffer<float> x_scales(x.scales);
  DeviceBuffer<uint16_t> out(static_cast<size_t>(c.m) * n_out);
  DeviceBuffer<uint16_t> residual_dev(residual);
  DeviceBuffer<float> partial(splitk_workspace_floats(c.m, c.n));
  DeviceBuffer<int> counters(splitk_counter_count(c.m, c.n));
  partial.fill_bytes(0);
  counters.fill_bytes(0);
  SplitKWorkspace workspace{partial.get(), counters.get(), partial.size(), counters.size()};

  GemmArgs args;
  args.x = x_dev.get();
  args.x_scales = x_scales.get();
  args.m = c.m;
  args.s_inv = s_inv;
  args.epilogue = c.epilogue;
  args.residual = residual_dev.get();
  args.out = out.get();
  GemmConfig forced;
  if (c.forced_tile) {
    const int groups = c.k / c.group;
    forced.token_tile = c.forced_tile;
    forced.groups_per_split = (groups + c.forced_splits - 1) / c.forced_splits;
    forced.splits = (groups + forced.groups_per_split - 1) / forced.groups_per_split;
    forced.kernel = c.forced_kernel;
  }
  // Twice: the second launch checks that split-K leaves its workspace clean.
  for (int launch = 0; launch < 2; ++launch) {
    out.fill_bytes(0xFF);
    gemm_w4a8(args, prepared, workspace, nullptr, c.forced_tile ? &forced : nullptr);
    FIREQ_CUDA_CHECK(cudaDeviceSynchronize());
  }
  const std::vector<uint16_t> got = out.download();
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NE(got[i], kPoison) << c.name << ": output element " << i << " not written";

  const Sample sample = sample_rows(w, swiglu, 96, rng);
  const std::vector<float> y = gemm_accumulate_reference(x, sample.rows, s_inv);
  const std::vector<float> a = absolute_products(x, sample.rows, s_inv);
  const int features = static_cast<int>(sample.features.size());
  int failures = 0;
  double worst = 0.0;
  for (int m = 0; m < c.m; ++m)
    for (int i = 0; i < features; ++i) {
      const int f = sample.features[i];
      const size_t at = static_cast<size_t>(m) * sample.rows.n;
      float want, budget;
      if (swiglu) {
        const float gate = y[at + i], up = y[at + features + i];
        want = round_to_bf16(silu_reference(gate) * up);
        budget = std::ldexp(1.1f * std::fabs(up) * a[at + i] + std::fabs(silu_reference(gate)) * a[at + features + i], -12);
      } else {
        float v = y[at + i];
        if (c.epilogue == Epilogue::kResidualAdd) v += bf16_to_float(residual[static_cast<size_t>(m) * n_out + f]);
        want = round_to_bf16(v);
        budget = std::ldexp(a[at + i], -12);
      }
      const float have = bf16_to_float(got[static_cast<size_t>(m) * n_out + f]);
      const float tolerance = std::ldexp(std::fabs(want), -7) + budget + 1e-30f;
      const float error = std::fabs(have - want);
      worst = std::max(worst, static_cast<double>(error / tolerance));
      if (!(error <= tolerance) && ++failures <= 5)
        ADD_FAILURE() << c.name << " m=" << m << " feature=" << f << ": got " << have << ", want " << want
                      << " (tolerance " << tolerance << ")";
    }
  EXPECT_EQ(failures, 0) << c.name;
  std::printf("%-28s M=%-5d N=%-6d K=%-6d g%-3d %-8s worst error / bound = %.3f\n", c.name.c_str(), c.m, c.n, c.k,
              c.group, epilogue_name(c.epilogue), worst);
}

struct Model {
  const char* name;
  int hidden, q_dim, kv_dim, inter, group;
};

std::vector<Case> model_cases() {
  const Model models[] = {{"llama2-7b", 4096, 4096, 4096, 11008, 128},
                          {"llama2-13b", 5120, 5120, 5120, 13824, 128},
                          {"llama3-8b", 4096, 4096, 1024, 14336, 128},
                          {"llama3-70b", 8192, 8192, 1024, 28672, 128},
                          {"smollm2-135m", 576, 576, 192, 1536, 64}};
  std::vector<Case> cases;
  for (const Model& md : models)
    for (const int m : {1, 37, 300}) {
      const std::string base = std::string(md.name);
      cases.push_back({base + ":qkv", m, md.q_dim + 2 * md.kv_dim, md.hidden, md.group, Epilogue::kBf16});
      cases.push_back({base + ":o", m, md.hidden, md.q_dim, md.group, Epilogue::kResidualAdd});
      cases.push_back({base + ":gate_up", m, 2 * md.inter, md.hidden, md.group, Epilogue::kSwiGlu});
      cases.push_back({base + ":down", m, md.hidden, md.inter, md.group, Epilogue::kResidualAdd});
    }
  return cases;
}

class GemmGpuModels : public ::testing::TestWithParam<Case> {};

TEST_P(GemmGpuModels, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  run_case(GetParam());
}

INSTANTIATE_TEST_SUITE_P(LlamaShapes, GemmGpuModels, ::testing::ValuesIn(model_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string s = info.param.name + "_m" + std::to_string(info.param.m);
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

TEST(GemmGpu, SmallestShapesAndEveryTileAndSplit) {
  SKIP_WITHOUT_GPU();
  run_case({"k64", 1, 64, 64, 64, Epilogue::kBf16});
  run_case({"k128", 1, 128, 128, 128, Epilogue::kBf16});
  run_case({"k576", 5, 192, 576, 64, Epilogue::kResidualAdd});
  // Group 128 (8 groups): uneven splits leave odd group counts (the kernel's two-group loop and its
  // one-group tail); N = 320 is an odd tile pair (the idle warpgroup computes on padding).
  for (const int tile : {16, 64, 128, 192})
    for (const int splits : {1, 3, 8}) {
      if (tile >= 128 && splits > 1) continue;  // split-K only with the 16- and 64-token tiles
      for (const Epilogue e : {Epilogue::kBf16, Epilogue::kSwiGlu, Epilogue::kResidualAdd})
        run_case({"forced t" + std::to_string(tile) + " s" + std::to_string(splits), tile + 3, 320, 1024, 128, e, tile,
                  splits});
    }
  // Group 64 runs the 64-token kernel only.
  for (const int splits : {1, 3})
    for (const Epilogue e : {Epilogue::kBf16, Epilogue::kSwiGlu, Epilogue::kResidualAdd})
      run_case({"forced g64 t64 s" + std::to_string(splits), 67, 320, 576, 64, e, 64, splits});
  run_case({"odd groups t128", 130, 192, 1152, 128, Epilogue::kBf16, 128, 1});
  run_case({"odd groups t192", 200, 192, 1152, 128, Epilogue::kBf16, 192, 1});
}

// The large token tiles on Llama-3-8B shapes with many token tiles and tile-pair bands (gate_up:
// 224 pairs = 7 bands of 32), several work items per CTA; split-K with the 64-token tile on K = 14336.
TEST(GemmGpu, LargeTokenTilesOnLlamaShapes) {
  SKIP_WITHOUT_GPU();
  run_case({"l3 gate_up t192", 1000, 28672, 4096, 128, Epilogue::kSwiGlu, 192, 1});
  run_case({"l3 gate_up t128", 777, 28672, 4096, 128, Epilogue::kBf16, 128, 1});
  run_case({"l3 down t64 s3", 300, 4096, 14336, 128, Epilogue::kResidualAdd, 64, 3});
  run_case({"l3 down t128", 300, 4096, 14336, 128, Epilogue::kResidualAdd, 128, 1});
  run_case({"l3 qkv t192", 2049, 6144, 4096, 128, Epilogue::kBf16, 192, 1});
}

// The decode kernel (mma.sync, weights streamed into registers): every m16n8 tile count, ragged M
// inside a tile, split-K with uneven splits, an odd tile pair (N = 320: its second tile is padding),
// both group sizes and every epilogue. The model shapes above reach it through the table (M = 1, 37).
TEST(GemmGpu, DecodeKernelEveryTokenTileAndSplit) {
  SKIP_WITHOUT_GPU();
  for (const int m : {1, 3, 8, 13, 16, 29, 33, 64})
    for (const int splits : {1, 3}) {
      const int tile = m <= 8 ? 8 : (m <= 16 ? 16 : (m <= 32 ? 32 : 64));
      for (const Epilogue e : {Epilogue::kBf16, Epilogue::kSwiGlu, Epilogue::kResidualAdd}) {
        const int group = e == Epilogue::kSwiGlu ? 128 : 64;
        run_case({"decode t" + std::to_string(tile) + " s" + std::to_string(splits), m, 320, 1024, group, e, tile,
                  splits, GemmKernel::kDecodeMma});
      }
    }
  run_case({"decode k576 g64", 5, 192, 576, 64, Epilogue::kResidualAdd, 8, 9, GemmKernel::kDecodeMma});
  // Several cycles of the weight-stage ring and of the X rounds, ending in a partial round.
  run_case({"decode ring k2176 g128", 3, 320, 2176, 128, Epilogue::kSwiGlu, 8, 1, GemmKernel::kDecodeMma});
  run_case({"decode ring k1600 g64", 7, 192, 1600, 64, Epilogue::kBf16, 8, 2, GemmKernel::kDecodeMma});
  run_case({"decode ring k2176 t16", 11, 320, 2176, 128, Epilogue::kResidualAdd, 16, 1, GemmKernel::kDecodeMma});
  run_case({"decode k128", 2, 64, 128, 128, Epilogue::kBf16, 8, 1, GemmKernel::kDecodeMma});
}

TEST(GemmGpu, RmsNormFp8MatchesReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(std::random_device{}());
  // 576..8192: the register-resident kernel; 1004, 14336 and 28672: the three-pass kernel (not whole
  // 16-byte vectors; longer than the registers hold).
  for (const int k : {576, 4096, 8192, 1004, 14336, 28672}) {
    const int m = k > 16384 ? 5 : 67;
    std::vector<uint16_t> x(static_cast<size_t>(m) * k), gamma(k);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (auto& v : x) v = bf16_from_float(normal(rng));
    for (auto& v : gamma) v = bf16_from_float(std::uniform_real_distribution<float>(0.2f, 2.0f)(rng));
    for (const bool with_norm : {true, false}) {
      const Fp8Activations want = with_norm ? rmsnorm_fp8_reference(x.data(), gamma.data(), m, k, 1e-5f)
                                            : quantize_bf16_rows_reference(x.data(), m, k);
      DeviceBuffer<uint16_t> x_dev(x), gamma_dev(gamma);
      DeviceBuffer<uint8_t> out(static_cast<size_t>(m) * k);
      DeviceBuffer<float> scales(m);
      out.fill_bytes(0x7F);
      scales.fill_bytes(0xFF);
      rmsnorm_quantize_fp8(x_dev.get(), with_norm ? gamma_dev.get() : nullptr, m, k, 1e-5f, out.get(), scales.get(),
                           nullptr);
      FIREQ_CUDA_CHECK(cudaDeviceSynchronize());
      const auto codes = out.download();
      const auto got_scales = scales.download();
      size_t differing = 0;
      for (int r = 0; r < m; ++r) {
        // The GPU's sum of squares is summed in another order: the scale may move by one BF16 ulp.
        EXPECT_NEAR(got_scales[r], want.scales[r], std::ldexp(want.scales[r], -7)) << "row " << r;
        if (got_scales[r] != want.scales[r]) continue;
        for (int i = 0; i < k; ++i) {
          const size_t at = static_cast<size_t>(r) * k + i;
          if (codes[at] == want.values[at]) continue;
          ++differing;
          EXPECT_TRUE(with_norm) << "plain FP8 quantization must be bit-exact";
          // inv_rms may differ in its last bit, which moves a value sitting on a rounding boundary to
          // the neighbouring e4m3 code (up to 1/8 relative): same sign, magnitude code +-1.
          const int got_magnitude = codes[at] & 0x7F, want_magnitude = want.values[at] & 0x7F;
          EXPECT_TRUE((codes[at] & 0x80) == (want.values[at] & 0x80) && std::abs(got_magnitude - want_magnitude) <= 1)
              << "row " << r << " col " << i << ": code " << int{codes[at]} << ", reference " << int{want.values[at]};
        }
      }
      EXPECT_LE(differing, codes.size() / 100) << "K=" << k;
    }
  }
}

TEST(GemmGpu, RejectsBadShapes) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<uint8_t> bytes(4096);
  PreparedWeights w;
  w.n = 100;  // not a multiple of 64
  w.k = 128;
  w.group_size = 128;
  w.data = bytes.get();
  EXPECT_THROW(prepare_weights(bytes.get(), bytes.get(), w, nullptr), Error);
  w.n = 64;
  w.k = 96;  // not a multiple of the group
  EXPECT_THROW(prepare_weights(bytes.get(), bytes.get(), w, nullptr), Error);
  w.k = 128;
  GemmArgs args;
  args.x = bytes.get();
  args.x_scales = reinterpret_cast<const float*>(bytes.get());
  args.out = reinterpret_cast<uint16_t*>(bytes.get());
  args.m = 1;
  args.epilogue = Epilogue::kSwiGlu;  // weights not interleaved
  EXPECT_THROW(gemm_w4a8(args, w, SplitKWorkspace{}, nullptr), Error);
}

}  // namespace
}  // namespace fireq::gemm
