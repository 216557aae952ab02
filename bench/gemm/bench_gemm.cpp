// Device benchmark of the INT4 x FP8 GEMM beside cuBLASLt FP8 and cuBLAS BF16, in one process:
// CUDA graphs of many launches, weights rotated over buffers larger than L2 so they come from HBM,
// median of 11 graph replays. Also measures the two ceilings (device-to-device copy bandwidth,
// cuBLASLt FP8 at 8192^3). Writes one JSON object per line (bench/gemm/merge_results.py merges it
// with the FBGEMM peers into bench/results/). --sweep times every tile/split configuration of the
// wgmma kernel (split-K up to M = 256) and prints the best, --sweep-decode every split count of the decode
// kernel (M <= 64), to regenerate the dispatch table. At M <= 64 both kernels are also timed forced
// (variants ours_wgmma:bf16, ours_decode:bf16), and the decode kernel's reach per shape is printed as
// kMeasuredDecodeReach entries for dispatch.cpp.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../../tests/kernels_gemm/gpu_buffers.h"
#include "../common/graph_timing.h"
#include "fireq/cuda_check.h"
#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"

using namespace fireq;
using namespace fireq::gemm;
using fireq::testing::DeviceBuffer;

void launch_read_stream(const void* data, size_t bytes, uint32_t* sink, int sm_count, cudaStream_t stream);

namespace {

#define CUBLAS_CHECK(call)                                                                             \
  do {                                                                                                 \
    const cublasStatus_t s_ = (call);                                                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) fail(#call, " failed at ", __FILE__, ":", __LINE__, ": ", int(s_)); \
  } while (0)

cudaStream_t g_stream;

// Median microseconds per launch of fn(i), i rotating over buffers, from a graph of `reps` launches.
double time_us(const std::function<void(int)>& fn, int reps) {
  return fireq::bench::graph_median_us([&] { for (int r = 0; r < reps; ++r) fn(r); }, reps, g_stream);
}

int reps_for(int m) { return m <= 256 ? 50 : (m <= 1024 ? 20 : 5); }
int buffers_for(size_t bytes) { return static_cast<int>(std::clamp<size_t>((256u << 20) / bytes + 1, 2, 16)); }

void random_bytes(DeviceBuffer<uint8_t>& b, uint64_t seed, uint8_t mask = 0xFF, uint8_t add = 0) {
  std::vector<uint8_t> h(b.size());
  for (auto& v : h) v = static_cast<uint8_t>((gemm::testing::next_random(seed) & mask) + add);
  b.upload(h);
}

// FP8 e4m3 codes of moderate magnitude (no NaN): sign, exponent 4..10, any mantissa.
void random_fp8(DeviceBuffer<uint8_t>& b, uint64_t seed) {
  std::vector<uint8_t> h(b.size());
  for (auto& v : h) {
    const uint64_t r = gemm::testing::next_random(seed);
    v = static_cast<uint8_t>((r & 0x80) | ((4 + (r >> 8) % 7) << 3) | ((r >> 16) & 7));
  }
  b.upload(h);
}

void random_bf16(DeviceBuffer<uint16_t>& b, uint64_t seed) {
  std::vector<uint16_t> h(b.size());
  for (auto& v : h) v = bf16_from_float(static_cast<float>(static_cast<int64_t>(gemm::testing::next_random(seed) % 2001) - 1000) * 1e-3f);
  b.upload(h);
}

struct CublasLtFp8 {
  cublasLtHandle_t handle;
  DeviceBuffer<uint8_t> workspace{32u << 20};
  DeviceBuffer<float> one{1};
  CublasLtFp8() {
    CUBLAS_CHECK(cublasLtCreate(&handle));
    one.upload({1.0f});
  }
  // Y[M][N] (bf16) = X[M][K] . W[N][K]^T, FP8 e4m3, per-tensor scales of 1.
  std::function<void(const uint8_t*, const uint8_t*, uint16_t*)> plan(int m, int n, int k) {
    cublasLtMatmulDesc_t op;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
    const float* scale = one.get();
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale, sizeof scale));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scale, sizeof scale));
    cublasLtMatrixLayout_t a, b, c;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, k, n, k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, k, m, k));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, n, m, n));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = workspace.size();
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, c, c, pref, 1, &result, &found));
    if (found == 0) fail("cuBLASLt has no FP8 algorithm for ", m, "x", n, "x", k);
    return [=, this](const uint8_t* w, const uint8_t* x, uint16_t* y) {
      const float alpha = 1.0f, beta = 0.0f;
      CUBLAS_CHECK(cublasLtMatmul(handle, op, &alpha, w, a, x, b, &beta, y, c, y, c, &result.algo, workspace.get(),
                                  workspace.size(), g_stream));
    };
  }
};

double measure_read_bandwidth(int sm_count) {
  const size_t bytes = size_t{2} << 30;
  DeviceBuffer<uint8_t> a(bytes);
  DeviceBuffer<uint32_t> sink(1);
  a.fill_bytes(1);
  const double us = time_us([&](int) { launch_read_stream(a.get(), bytes, sink.get(), sm_count, g_stream); }, 5);
  return bytes / (us * 1e-6) / 1e9;
}

double measure_copy_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer<uint8_t> a(bytes), b(bytes);
  a.fill_bytes(1);
  const double us = time_us([&](int) { FIREQ_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, g_stream)); }, 5);
  return 2.0 * bytes / (us * 1e-6) / 1e9;
}

struct Shape {
  const char* name;
  int n, k;
  Epilogue fused;
};

void print_row(FILE* f, const char* name, int m, int n, int k, const std::string& variant, double us, double bytes,
               double fp8_us, double bf16_us) {
  const double tflops = 2.0 * m * n * k / (us * 1e-6) / 1e12;
  std::fprintf(f, "{\"case\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"variant\": \"%s\", \"us\": %.2f, \"tflops\": %.2f, "
               "\"gbps\": %.0f, \"weight_bytes\": %.0f, \"peers_us\": {\"cublaslt_fp8\": %.2f, \"cublas_bf16\": %.2f}}\n",
               name, m, n, k, variant.c_str(), us, tflops, bytes / (us * 1e-6) / 1e9, static_cast<double>(n) * k / 2, fp8_us,
               bf16_us);
  std::fflush(f);
}

}  // namespace

// The decode kernel's reach per shape: the largest measured M up to which it beat the wgmma kernel at
// every measured M. Shapes whose reach is not the default are printed as dispatch.cpp's
// kMeasuredDecodeReach entries.
template <size_t kShapes>
void print_decode_reach(const Shape (&shapes)[kShapes],
                        const std::map<std::string, std::map<int, std::pair<double, double>>>& forced_us) {
  for (const Shape& s : shapes) {
    const auto it = forced_us.find(s.name);
    if (it == forced_us.end()) continue;
    int reach = 0;
    for (const auto& [m, us] : it->second) {
      if (us.second >= us.first) break;
      reach = m;
    }
    std::printf("decode reach %-10s M <= %-3d (default %d)%s", s.name, reach, kDecodeDispatchMaxM,
                reach == kDecodeDispatchMaxM ? "\n" : ": kMeasuredDecodeReach entry ");
    if (reach != kDecodeDispatchMaxM) std::printf("{%d, %d, %d},\n", s.n, s.k, reach);
  }
}

int main(int argc, char** argv) {
  try {
    std::string out_path = "bench_gemm.jsonl";
    bool sweep = false, sweep_decode = false;
    std::string only_shape;  // --shape NAME: one shape (profiling runs)
    std::vector<int> ms = {1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
      else if (!std::strcmp(argv[i], "--sweep")) sweep = true;
      else if (!std::strcmp(argv[i], "--sweep-decode")) sweep_decode = true;
      else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) only_shape = argv[++i];
      else if (!std::strcmp(argv[i], "--m") && i + 1 < argc) {
        ms.clear();
        for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) ms.push_back(std::atoi(t));
      } else fail("bench_gemm: unknown argument ", argv[i], " (--out FILE, --m 1,16,..., --shape NAME, --sweep, --sweep-decode)");
    }
    FIREQ_CUDA_CHECK(cudaStreamCreate(&g_stream));
    cudaDeviceProp prop;
    FIREQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    FILE* f = std::fopen(out_path.c_str(), "w");
    if (!f) fail("bench_gemm: cannot write ", out_path);

    CublasLtFp8 lt;
    cublasHandle_t blas;
    CUBLAS_CHECK(cublasCreate(&blas));
    CUBLAS_CHECK(cublasSetStream(blas, g_stream));

    const double copy_gbps = measure_copy_bandwidth();
    const double read_gbps = measure_read_bandwidth(prop.multiProcessorCount);
    double fp8_peak = 0;
    {
      const int s = 8192;
      DeviceBuffer<uint8_t> a(size_t{s} * s), b(size_t{s} * s);
      DeviceBuffer<uint16_t> c(size_t{s} * s);
      random_fp8(a, 1);
      random_fp8(b, 2);
      auto mm = lt.plan(s, s, s);
      fp8_peak = 2.0 * s * s * s / (time_us([&](int) { mm(a.get(), b.get(), c.get()); }, 5) * 1e-6) / 1e12;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"sm_count\": %d, \"copy_gbps\": %.0f, \"read_gbps\": %.0f, \"fp8_peak_tflops\": %.1f}\n",
                 prop.name, prop.multiProcessorCount, copy_gbps, read_gbps, fp8_peak);
    std::printf("%s: copy %.0f GB/s (read+write), read %.0f GB/s, cuBLASLt FP8 8192^3 %.0f TFLOP/s\n", prop.name, copy_gbps,
                read_gbps, fp8_peak);

    const Shape shapes[] = {{"l3_qkv", 6144, 4096, Epilogue::kBf16},          {"l3_o", 4096, 4096, Epilogue::kResidualAdd},
                            {"l3_gate_up", 28672, 4096, Epilogue::kSwiGlu},   {"l3_down", 4096, 14336, Epilogue::kResidualAdd},
                            {"l2_qkv", 12288, 4096, Epilogue::kBf16},         {"l2_gate_up", 22016, 4096, Epilogue::kSwiGlu},
                            {"l2_down", 4096, 11008, Epilogue::kResidualAdd}};
    const int max_m = *std::max_element(ms.begin(), ms.end());
    std::map<std::string, std::map<int, std::pair<double, double>>> forced_us;  // shape -> M -> (wgmma, decode)
    for (const Shape& s : shapes) {
      if (!only_shape.empty() && only_shape != s.name) continue;
      const size_t int4_bytes = size_t{1} * s.n * s.k / 2;
      const int nb_int4 = buffers_for(int4_bytes), nb_fp8 = buffers_for(2 * int4_bytes), nb_bf16 = buffers_for(4 * int4_bytes);
      std::vector<DeviceBuffer<uint8_t>> int4_data, swiglu_data, w8;
      std::vector<DeviceBuffer<uint16_t>> w16;
      std::vector<PreparedWeights> prepared, prepared_swiglu;
      {
        DeviceBuffer<uint8_t> packed(int4_bytes), canonical_scales(size_t{1} * s.n * s.k / 128);
        random_bytes(packed, 11);
        random_bytes(canonical_scales, 12, 0x0F, 0x18);
        for (int i = 0; i < nb_int4; ++i) {
          for (const bool swiglu : {false, true}) {
            if (swiglu && s.fused != Epilogue::kSwiGlu) continue;
            auto& dv = swiglu ? swiglu_data : int4_data;
            dv.emplace_back(prepared_weight_bytes(s.n, s.k, 128));
            PreparedWeights p{s.n, s.k, 128, swiglu, dv.back().get()};
            prepare_weights(packed.get(), canonical_scales.get(), p, g_stream);
            (swiglu ? prepared_swiglu : prepared).push_back(p);
          }
        }
      }
      for (int i = 0; i < nb_fp8; ++i) {
        w8.emplace_back(2 * int4_bytes);
        random_fp8(w8.back(), 100 + i);
      }
      for (int i = 0; i < nb_bf16; ++i) {
        w16.emplace_back(4 * int4_bytes / 2);
        random_bf16(w16.back(), 200 + i);
      }
      DeviceBuffer<uint8_t> x(size_t{1} * max_m * s.k);
      DeviceBuffer<uint16_t> x16(size_t{1} * max_m * s.k), y(size_t{1} * max_m * s.n), residual(size_t{1} * max_m * s.n);
      DeviceBuffer<float> x_scales(max_m), partial(splitk_workspace_floats(256, s.n));
      DeviceBuffer<int> counters(splitk_counter_count(256, s.n));
      DeviceBuffer<uint8_t> y8(size_t{1} * max_m * s.n);
      DeviceBuffer<float> y8_scales(max_m);
      random_fp8(x, 3);
      random_bf16(x16, 4);
      random_bf16(residual, 5);
      x_scales.upload(std::vector<float>(max_m, 0.01f));
      partial.fill_bytes(0);
      counters.fill_bytes(0);
      SplitKWorkspace ws{partial.get(), counters.get(), partial.size(), counters.size()};

      for (const int m : ms) {
        const int reps = reps_for(m);
        auto fp8 = lt.plan(m, s.n, s.k);
        const double fp8_us = time_us([&](int i) { fp8(w8[i % nb_fp8].get(), x.get(), y.get()); }, reps);
        const float alpha = 1.0f, beta = 0.0f;
        const double bf16_us = time_us([&](int i) {
          CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, w16[i % nb_bf16].get(), CUDA_R_16BF, s.k,
                                    x16.get(), CUDA_R_16BF, s.k, &beta, y.get(), CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
        }, reps);
        const double io_bytes = int4_bytes + s.n * (s.k / 128.0) + double(m) * s.k;
        std::vector<Epilogue> epilogues = {Epilogue::kBf16};
        if (s.fused != Epilogue::kBf16) epilogues.push_back(s.fused);
        for (const Epilogue e : epilogues) {
          GemmArgs args{x.get(), x_scales.get(), m, 1.0f, e, residual.get(), y.get()};
          const auto& pw = e == Epilogue::kSwiGlu ? prepared_swiglu : prepared;
          const double us = time_us([&](int i) { gemm_w4a8(args, pw[i % nb_int4], ws, g_stream); }, reps);
          const int n_out = e == Epilogue::kSwiGlu ? s.n / 2 : s.n;
          const double bytes = io_bytes + 2.0 * m * n_out * (e == Epilogue::kResidualAdd ? 2 : 1);
          print_row(f, s.name, m, s.n, s.k, std::string("ours:") + epilogue_name(e), us, bytes, fp8_us, bf16_us);
          const GemmConfig c = choose_gemm_config(m, s.n, s.k, 128, prop.multiProcessorCount, true);
          std::printf("%-10s M=%-5d %-9s ours %8.2f us  cublaslt_fp8 %8.2f  cublas_bf16 %8.2f  x%.2f vs fp8  %5.0f GB/s  "
                      "[%s tile %d split %d]\n", s.name, m, epilogue_name(e), us, fp8_us, bf16_us, fp8_us / us,
                      bytes / (us * 1e-6) / 1e9, c.kernel == GemmKernel::kDecodeMma ? "decode" : "wgmma", c.token_tile,
                      c.splits);
        }
        if (m <= kDecodeMaxM) {  // both kernels forced at the same M, whatever the table picks
          for (const bool decode : {false, true}) {
            const GemmConfig c = decode ? choose_decode_config(m, s.n, s.k, 128, prop.multiProcessorCount, true)
                                        : choose_wgmma_config(m, s.n, s.k, 128, prop.multiProcessorCount, true);
            GemmArgs args{x.get(), x_scales.get(), m, 1.0f, Epilogue::kBf16, nullptr, y.get()};
            const double us = time_us([&](int i) { gemm_w4a8(args, prepared[i % nb_int4], ws, g_stream, &c); }, reps);
            print_row(f, s.name, m, s.n, s.k, decode ? "ours_decode:bf16" : "ours_wgmma:bf16", us, io_bytes + 2.0 * m * s.n,
                      fp8_us, bf16_us);
            (decode ? forced_us[s.name][m].second : forced_us[s.name][m].first) = us;
            std::printf("%-10s M=%-5d bf16      %s %8.2f us  x%.2f vs fp8  [tile %d split %d]\n", s.name, m,
                        decode ? "decode" : "wgmma", us, fp8_us / us, c.token_tile, c.splits);
          }
        }
        if (sweep_decode && m <= kDecodeMaxM) {
          const int groups = s.k / 128;
          for (int splits = 1; splits <= std::min(groups, 32); ++splits) {
            GemmConfig c = choose_decode_config(m, s.n, s.k, 128, prop.multiProcessorCount, true);
            c.groups_per_split = (groups + splits - 1) / splits;
            if ((groups + c.groups_per_split - 1) / c.groups_per_split != splits) continue;
            c.splits = splits;
            GemmArgs args{x.get(), x_scales.get(), m, 1.0f, Epilogue::kBf16, nullptr, y.get()};
            const double us = time_us([&](int i) { gemm_w4a8(args, prepared[i % nb_int4], ws, g_stream, &c); }, reps);
            std::printf("sweep-decode %-10s M=%-3d splits %-2d %8.2f us\n", s.name, m, splits, us);
            std::fprintf(f, "{\"sweep_decode\": \"%s\", \"M\": %d, \"splits\": %d, \"us\": %.2f}\n", s.name, m, splits, us);
          }
        }
        {  // FP8 output for the next GEMM: the BF16 GEMM, then per-token FP8 of its rows.
          GemmArgs args{x.get(), x_scales.get(), m, 1.0f, Epilogue::kBf16, nullptr, y.get()};
          const double us = time_us([&](int i) {
            gemm_w4a8(args, prepared[i % nb_int4], ws, g_stream);
            rmsnorm_quantize_fp8(y.get(), nullptr, m, s.n, 0.0f, y8.get(), y8_scales.get(), g_stream);
          }, reps);
          print_row(f, s.name, m, s.n, s.k, "ours:bf16+fp8out", us, io_bytes + 2.0 * m * s.n, fp8_us, bf16_us);
        }
        if (sweep && m > kDecodeDispatchMaxM) {  // split-K only where the workspace (M <= 256) allows
          const int groups = s.k / 128;
          double best = 1e30;
          GemmConfig best_c{};
          for (const int tile : {16, 64, 128, 192})
            for (int splits = 1; splits <= (m <= 256 ? std::min(groups, 16) : 1); ++splits) {
              if ((tile == 16 && m > 64) || (tile >= 128 && splits > 1) || (tile > 16 && tile / 4 >= m && m > 1)) continue;
              GemmConfig c;
              c.token_tile = tile;
              c.groups_per_split = (groups + splits - 1) / splits;
              c.splits = (groups + c.groups_per_split - 1) / c.groups_per_split;
              if (c.splits != splits) continue;
              c.work_items = ((s.n / 64 + 1) / 2) * ((m + tile - 1) / tile) * splits;
              c.grid = std::min(c.work_items, prop.multiProcessorCount);
              GemmArgs args{x.get(), x_scales.get(), m, 1.0f, Epilogue::kBf16, nullptr, y.get()};
              const double us = time_us([&](int i) { gemm_w4a8(args, prepared[i % nb_int4], ws, g_stream, &c); }, reps);
              std::fprintf(f, "{\"sweep_point\": \"%s\", \"M\": %d, \"token_tile\": %d, \"splits\": %d, \"us\": %.2f}\n",
                           s.name, m, tile, splits, us);
              if (us < best) {
                best = us;
                best_c = c;
              }
            }
          std::printf("sweep %-10s M=%-5d best tile %d splits %d: %.2f us\n", s.name, m, best_c.token_tile, best_c.splits, best);
          std::fprintf(f, "{\"sweep\": \"%s\", \"M\": %d, \"token_tile\": %d, \"splits\": %d, \"us\": %.2f}\n", s.name, m,
                       best_c.token_tile, best_c.splits, best);
        }
      }
    }
    print_decode_reach(shapes, forced_us);
    for (const int m : ms) {
      const int k = 4096;
      DeviceBuffer<uint16_t> h(size_t{1} * m * k), gamma(k);
      DeviceBuffer<uint8_t> q(size_t{1} * m * k);
      DeviceBuffer<float> qs(m);
      random_bf16(h, 7);
      random_bf16(gamma, 8);
      const double us = time_us([&](int) { rmsnorm_quantize_fp8(h.get(), gamma.get(), m, k, 1e-5f, q.get(), qs.get(), g_stream); }, reps_for(m));
      const double bytes = 3.0 * m * k;
      std::fprintf(f, "{\"case\": \"rmsnorm_fp8\", \"M\": %d, \"N\": 0, \"K\": %d, \"variant\": \"ours:rmsnorm_fp8\", \"us\": %.2f, "
                   "\"tflops\": 0, \"gbps\": %.0f, \"peers_us\": {}}\n", m, k, us, bytes / (us * 1e-6) / 1e9);
      std::printf("rmsnorm_fp8 M=%-5d K=%d %8.2f us %6.0f GB/s\n", m, k, us, bytes / (us * 1e-6) / 1e9);
    }
    std::fclose(f);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
}
