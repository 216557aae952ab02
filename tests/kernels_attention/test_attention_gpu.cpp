// The CUDA kernels against the CPU references over sweeps of shapes; skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "../support/device_buffer.h"
#include "fireq/error.h"
#include "problem.h"

namespace fireq::attention {
namespace {

using fireq::testing::DeviceBuffer;
using testing::HostProblem;
using testing::ProblemSpec;

#define SKIP_WITHOUT_GPU() \
  if (!fireq::testing::gpu_present()) GTEST_SKIP() << "no CUDA device"

uint32_t fresh_seed() { return std::random_device{}(); }

// The device copy of a HostProblem's arrays (cache, metadata, queries, output).
struct DeviceProblem {
  DeviceBuffer<uint16_t> qkv;
  DeviceBuffer<int32_t> positions, seq_index, block_table, seq_lens, query_start;
  DeviceBuffer<float> rope, post_rope_k_scale;
  DeviceBuffer<uint8_t> k, v, q_all, q;
  DeviceBuffer<uint16_t> k_scale, v_scale, q_scale_all, q_scale, out;

  explicit DeviceProblem(const HostProblem& p)
      : qkv(p.qkv), positions(p.positions), seq_index(p.seq_index), block_table(p.block_table),
        seq_lens(p.seq_lens), query_start(p.query_start), rope(p.rope), post_rope_k_scale(p.post_rope_k_scale),
        k(p.k), v(p.v), q_all(p.q_all), q(p.q), k_scale(p.k_scale), v_scale(p.v_scale),
        q_scale_all(p.q_scale_all), q_scale(p.q_scale), out(p.out) {}

  PagedKvCache cache(const PagedKvLayout& layout) {
    return PagedKvCache{layout, k.get(), v.get(), k_scale.get(), v_scale.get()};
  }
  PagedSequences sequences(const HostProblem& p) {
    return PagedSequences{static_cast<int>(p.seq_lens.size()), block_table.get(), p.max_pages, seq_lens.get()};
  }
};

// ---------------------------------------------------------------------------------------------
// Fused RoPE/quantize/cache write: bit-identical to the reference, written in two steps per
// sequence (a prefix, then the rest from an odd or even position) over a garbage-filled cache.
struct QuantizeCase {
  int q_heads, kv_heads, head_dim, page_size;
  std::vector<int> seq_lens, first_step;
};

// The tokens of step `step` (0: positions < first_step[b], 1: the rest) as their own arrays.
struct StepTokens {
  std::vector<uint16_t> qkv;
  std::vector<int32_t> positions, seq_index;
};

StepTokens step_tokens(const HostProblem& p, const std::vector<int>& first_step, int step) {
  StepTokens s;
  const size_t width = size_t(p.spec.q_heads + 2 * p.spec.kv_heads) * p.spec.head_dim;
  for (int t = 0; t < p.tokens; ++t) {
    const bool in_first = p.positions[t] < first_step[p.seq_index[t]];
    if (in_first != (step == 0)) continue;
    s.qkv.insert(s.qkv.end(), p.qkv.begin() + t * width, p.qkv.begin() + (t + 1) * width);
    s.positions.push_back(p.positions[t]);
    s.seq_index.push_back(p.seq_index[t]);
  }
  return s;
}

TEST(AttentionGpu, QuantizeQkvMatchesReferenceBitForBit) {
  SKIP_WITHOUT_GPU();
  const std::vector<QuantizeCase> cases = {
      {32, 8, 128, 16, {37, 64, 1, 300}, {11, 64, 0, 255}},
      {9, 3, 64, 32, {100, 7}, {1, 4}},
      {64, 8, 128, 64, {129}, {128}},
  };
  for (const QuantizeCase& c : cases) {
    ProblemSpec spec{c.q_heads, c.kv_heads, c.head_dim, c.page_size, c.seq_lens,
                     std::vector<int>(c.seq_lens.size(), 1)};
    spec.seed = fresh_seed();
    SCOPED_TRACE(::testing::Message() << "q_heads " << c.q_heads << " d " << c.head_dim << " seed " << spec.seed);
    HostProblem host = testing::make_problem(spec);
    DeviceProblem dev(host);
    for (int step = 0; step < 2; ++step) {
      StepTokens tokens = step_tokens(host, c.first_step, step);
      const int n = static_cast<int>(tokens.positions.size());
      std::vector<uint8_t> q_ref(size_t(n) * c.q_heads * c.head_dim, 0);
      std::vector<uint16_t> q_scale_ref(size_t(n) * c.q_heads, 0);
      QkvQuantizeArgs ref = host.quantize_args();
      ref.qkv = tokens.qkv.data();
      ref.tokens = n;
      ref.positions = tokens.positions.data();
      ref.seq_index = tokens.seq_index.data();
      ref.q_fp8 = q_ref.data();
      ref.q_scale = q_scale_ref.data();
      quantize_qkv_reference(ref);

      DeviceBuffer<uint16_t> qkv(tokens.qkv);
      DeviceBuffer<int32_t> positions(tokens.positions), seq_index(tokens.seq_index);
      DeviceBuffer<uint8_t> q_out(std::vector<uint8_t>(q_ref.size(), 0xAA));
      DeviceBuffer<uint16_t> q_scale_out(std::vector<uint16_t>(q_scale_ref.size(), 0xFFFF));
      QkvQuantizeArgs a = ref;
      a.qkv = qkv.get();
      a.positions = positions.get();
      a.seq_index = seq_index.get();
      a.rope_cos_sin = dev.rope.get();
      a.post_rope_k_scale = dev.post_rope_k_scale.get();
      a.q_fp8 = q_out.get();
      a.q_scale = q_scale_out.get();
      a.cache = dev.cache(host.layout);
      a.sequences = dev.sequences(host);
      quantize_qkv(a, nullptr);
      FIREQ_CUDA_CHECK(cudaDeviceSynchronize());
      ASSERT_EQ(q_out.download(), q_ref) << "step " << step;
      ASSERT_EQ(q_scale_out.download(), q_scale_ref) << "step " << step;
    }
    EXPECT_EQ(dev.k.download(), host.k);
    EXPECT_EQ(dev.v.download(), host.v);
    EXPECT_EQ(dev.k_scale.download(), host.k_scale);
    EXPECT_EQ(dev.v_scale.download(), host.v_scale);
  }
}

// ---------------------------------------------------------------------------------------------
// Both attention kernels against paged_attention_reference(PRounding::fp16). They differ only by the
// running (kernel) versus global (reference) softmax max at which P is rounded to FP16, the FP32
// summation order, exp2f and the final BF16 rounding. Bound: max error <= 2^-7 of the largest
// |output| of the sequence, relative L2 error <= 3e-3; every output written and finite.
struct AttentionCase {
  const char* name;
  int q_heads, kv_heads, head_dim, page_size;
  std::vector<int> seq_lens, q_lens;
};

enum class Kernel { splitkv, prefill, prefill_fp8_serial, prefill_fp8_three_stage };

const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::splitkv: return " split-KV";
    case Kernel::prefill: return " prefill";
    case Kernel::prefill_fp8_serial: return " prefill FP8 wgmma serial";
    case Kernel::prefill_fp8_three_stage: return " prefill FP8 wgmma three-stage";
  }
  return "";
}

bool fp8_prefill(Kernel k) { return k == Kernel::prefill_fp8_serial || k == Kernel::prefill_fp8_three_stage; }

// The FP8 wgmma prefill against paged_attention_reference(PRounding::fp8_tile) and against FP64
// attention on the same dequantized inputs. Besides summation order and exp2f, kernel and reference
// round P to e4m3 at different points: the kernel scales P~ by its running max, the reference by the
// row's global max, so a weight can land on the other side of an e4m3 rounding boundary (3 mantissa
// bits: up to 2^-4 relative per weight). Bounds: relative L2 <= 3e-2 against the reference (measured
// 0 to 1.9e-2 on H100), <= 5e-2 against FP64 (measured 1.5e-3 to 3.6e-2; the reference's own bound
// is 4e-2, a single query over a long prefix comes closest); every output written and finite.
void check_fp8_prefill(HostProblem& host, const std::vector<uint16_t>& got) {
  paged_attention_reference(host.attention_args(), PRounding::fp8_tile);
  const ProblemSpec& spec = host.spec;
  const size_t row = size_t(spec.q_heads) * spec.head_dim;
  for (size_t b = 0; b < spec.seq_lens.size(); ++b) {
    const size_t begin = host.query_start[b] * row, end = host.query_start[b + 1] * row;
    std::vector<double> ref(end - begin);
    for (size_t i = begin; i < end; ++i) ref[i - begin] = bf16_to_float(host.out[i]);
    const testing::ErrorStats s = testing::compare(got, ref, begin);
    std::vector<float> qf, kf, vf;
    host.dequantized(static_cast<int>(b), qf, kf, vf);
    const auto exact = attention_fp64(qf.data(), kf.data(), vf.data(), spec.q_lens[b], spec.seq_lens[b], spec.q_heads,
                                      spec.kv_heads, spec.head_dim, 1.0 / std::sqrt(double(spec.head_dim)));
    const testing::ErrorStats e = testing::compare(got, exact, begin);
    std::printf("    seq %zu (len %d, %d queries): vs fp8_tile reference rel L2 %.2e max %.2e of %.2e; vs FP64 rel L2 %.2e\n",
                b, spec.seq_lens[b], spec.q_lens[b], s.rel_l2, s.max_abs, s.ref_max, e.rel_l2);
    std::fflush(stdout);
    ASSERT_TRUE(s.finite) << "sequence " << b << ": an output is NaN/inf (unwritten?)";
    EXPECT_LE(s.rel_l2, 3e-2) << "sequence " << b << " (seq_len " << spec.seq_lens[b] << ")";
    EXPECT_LE(e.rel_l2, 5e-2) << "sequence " << b << " (seq_len " << spec.seq_lens[b] << ")";
  }
}

// The FP8 copy of the output (PagedAttentionArgs::out_fp8) must be numerics.h's per-token
// quantization of the kernel's own BF16 output, bit for bit, every token written.
void check_fp8_output(const HostProblem& host, const std::vector<uint16_t>& out, const std::vector<uint8_t>& codes,
                      const std::vector<float>& scales) {
  const size_t row = size_t(host.spec.q_heads) * host.spec.head_dim;
  for (int token = 0; token < host.total_queries; ++token) {
    float absmax = 0.0f;
    for (size_t i = 0; i < row; ++i) absmax = std::max(absmax, std::fabs(bf16_to_float(out[token * row + i])));
    const float scale = fp8_token_scale(absmax);
    ASSERT_EQ(scales[token], scale) << "token " << token;
    for (size_t i = 0; i < row; ++i)
      ASSERT_EQ(codes[token * row + i], fp8_quantize_activation(bf16_to_float(out[token * row + i]), scale))
          << "token " << token << " element " << i;
  }
}

void run_attention_case(const AttentionCase& c, Kernel kernel, bool fp8_output = false) {
  ProblemSpec spec{c.q_heads, c.kv_heads, c.head_dim, c.page_size, c.seq_lens, c.q_lens};
  spec.seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << c.name << kernel_name(kernel) << (fp8_output ? " FP8 output" : "") << " seed "
                                    << spec.seed);
  HostProblem host = testing::make_problem(spec);
  quantize_qkv_reference(host.quantize_args());
  testing::gather_queries(host);
  DeviceProblem dev(host);  // out is NaN-poisoned
  PagedAttentionArgs a = host.attention_args();
  a.q = dev.q.get();
  a.q_scale = dev.q_scale.get();
  a.query_start = dev.query_start.get();
  a.cache = dev.cache(host.layout);
  a.sequences = dev.sequences(host);
  a.out = dev.out.get();
  const size_t row = size_t(c.q_heads) * c.head_dim;
  DeviceBuffer<uint8_t> out_fp8(std::vector<uint8_t>(host.total_queries * row, 0x7F));       // NaN poison
  DeviceBuffer<float> out_fp8_scale(std::vector<float>(host.total_queries, std::nanf("")));
  DeviceBuffer<uint32_t> fp8_workspace(std::vector<uint32_t>(2 * host.total_queries, 0xFFFFFFFFu));  // cleared by the launcher
  if (fp8_output) {
    a.out_fp8 = out_fp8.get();
    a.out_fp8_scale = out_fp8_scale.get();
    a.out_fp8_workspace = fp8_workspace.get();
    a.total_queries = host.total_queries;
  }
  if (kernel == Kernel::splitkv) {
    const size_t workspace_bytes = paged_attention_workspace_bytes(a);
    DeviceBuffer<uint8_t> workspace(std::vector<uint8_t>(workspace_bytes, 0xFF));  // NaN poison
    paged_attention_splitkv(a, workspace.get(), nullptr);
    FIREQ_CUDA_CHECK(cudaDeviceSynchronize());
  } else if (kernel == Kernel::prefill) {
    paged_attention_prefill(a, nullptr);
  } else {
    paged_attention_prefill_fp8(a, nullptr,
                                kernel == Kernel::prefill_fp8_serial ? PrefillPipeline::serial : PrefillPipeline::three_stage);
  }
  FIREQ_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = dev.out.download();
  if (fp8_output) check_fp8_output(host, got, out_fp8.download(), out_fp8_scale.download());

  if (fp8_prefill(kernel)) {
    check_fp8_prefill(host, got);
    return;
  }
  paged_attention_reference(host.attention_args(), PRounding::fp16);
  for (size_t b = 0; b < c.seq_lens.size(); ++b) {
    const size_t begin = host.query_start[b] * row, end = host.query_start[b + 1] * row;
    std::vector<double> ref(end - begin);
    for (size_t i = begin; i < end; ++i) ref[i - begin] = bf16_to_float(host.out[i]);
    const testing::ErrorStats s = testing::compare(got, ref, begin);
    ASSERT_TRUE(s.finite) << "sequence " << b << ": an output is NaN/inf (unwritten?)";
    EXPECT_LE(s.max_abs, s.ref_max / 128) << "sequence " << b << " (seq_len " << c.seq_lens[b] << ")";
    EXPECT_LE(s.rel_l2, 3e-3) << "sequence " << b << " (seq_len " << c.seq_lens[b] << ")";
  }
}

TEST(AttentionGpu, DecodeMatchesReference) {
  SKIP_WITHOUT_GPU();
  const std::vector<AttentionCase> cases = {
      {"llama3_varlen_page16", 32, 8, 128, 16, {1, 17, 64, 1000, 4097}, {1, 1, 1, 1, 1}},
      {"llama3_16k_page64", 32, 8, 128, 64, {16384, 5000}, {1, 1}},
      {"gqa64_8_page32", 64, 8, 128, 32, {3000, 65}, {1, 1}},
      {"smollm2_9_3_d64_page16", 9, 3, 64, 16, {1, 300, 8191}, {1, 1, 1}},
      {"two_new_tokens_page128", 32, 8, 128, 128, {2048, 333}, {2, 2}},
      {"three_new_tokens_two_chunks", 32, 8, 128, 64, {1024}, {3}},
  };
  for (const AttentionCase& c : cases) run_attention_case(c, Kernel::splitkv);
  for (const AttentionCase& c : cases) run_attention_case(c, Kernel::prefill);  // also right for 1 query
}

TEST(AttentionGpu, ChunkedPrefillMatchesReference) {
  SKIP_WITHOUT_GPU();
  const std::vector<AttentionCase> cases = {
      {"prefill_over_prefix", 8, 2, 128, 16, {200, 90}, {37, 90}},
      {"smollm2_varlen_prefill", 9, 3, 64, 32, {45, 130, 7}, {45, 130, 7}},
      {"llama3_chunk_of_64_over_1000", 32, 8, 128, 64, {1064}, {64}},
      {"llama3_prefill_600_page16", 32, 8, 128, 16, {600, 333}, {600, 333}},
      {"smollm2_prefill_1100_over_prefix", 9, 3, 64, 64, {1200}, {1100}},
  };
  for (const AttentionCase& c : cases) {
    run_attention_case(c, Kernel::splitkv);
    run_attention_case(c, Kernel::prefill);
  }
}

// The FP8 wgmma prefill: lengths around its 128-query / 128-key tiles, prefixes, pages 16..256,
// GQA 32/8, 64/8 and 9/3 (SmolLM2), head_dim 128 and 64, both consumer schedules.
TEST(AttentionGpu, Fp8WgmmaPrefillMatchesReference) {
  SKIP_WITHOUT_GPU();
  const std::vector<AttentionCase> cases = {
      {"one_tile_exact", 8, 2, 128, 64, {128}, {128}},
      {"varlen_around_tiles", 32, 8, 128, 16, {1, 127, 129, 255, 300}, {1, 127, 129, 255, 300}},
      {"prefix_not_tile_aligned", 32, 8, 128, 64, {1000, 517}, {333, 64}},
      {"decode_like_over_prefix", 8, 2, 128, 32, {700, 129}, {1, 3}},
      {"gqa64_8_page256", 64, 8, 128, 256, {600}, {600}},
      {"gqa4_1100_page128", 8, 2, 128, 128, {1100}, {1100}},
      {"smollm2_9_3_d64", 9, 3, 64, 16, {45, 130, 1200}, {45, 130, 1100}},
      {"d64_page64_prefix", 8, 2, 64, 64, {777}, {500}},
  };
  for (const AttentionCase& c : cases) {
    std::printf("  %s\n", c.name);
    run_attention_case(c, Kernel::prefill_fp8_three_stage);
    run_attention_case(c, Kernel::prefill_fp8_serial);
  }
}

// Small FP8 wgmma cases for compute-sanitizer (memcheck, racecheck): a prefix, a partial tile, GQA
// 9/3 at d = 64, several tiles per CTA so that the stages wrap and the consumers take turns.
TEST(AttentionGpu, Fp8WgmmaPrefillSmallCases) {
  SKIP_WITHOUT_GPU();
  const std::vector<AttentionCase> cases = {
      {"prefix_partial_tiles", 4, 2, 128, 16, {520}, {300}},
      {"smollm2_d64_two_seqs", 3, 1, 64, 32, {400, 77}, {400, 77}},
  };
  for (const AttentionCase& c : cases) {
    std::printf("  %s\n", c.name);
    run_attention_case(c, Kernel::prefill_fp8_three_stage);
    run_attention_case(c, Kernel::prefill_fp8_serial);
  }
}

// The FP8 output option of the launchers that have it: the split-KV kernel with one split (it writes
// the output itself) and with several (the combine kernel does), the FP8 wgmma prefill with both
// schedules; GQA 32/8 and 9/3.
TEST(AttentionGpu, Fp8OutputIsTheBf16OutputQuantizedPerToken) {
  SKIP_WITHOUT_GPU();
  const AttentionCase decode_one_split{"decode_one_split", 32, 8, 128, 16, {40, 64, 17}, {1, 2, 1}};
  const AttentionCase decode_splits{"decode_splits", 9, 3, 64, 64, {4097, 300}, {1, 3}};
  const AttentionCase prefill{"prefill_over_prefix", 32, 8, 128, 32, {700, 131}, {300, 131}};
  run_attention_case(decode_one_split, Kernel::splitkv, true);
  run_attention_case(decode_splits, Kernel::splitkv, true);
  run_attention_case(prefill, Kernel::prefill_fp8_three_stage, true);
  run_attention_case(prefill, Kernel::prefill_fp8_serial, true);
}

TEST(AttentionGpu, LaunchersRejectBadShapes) {
  SKIP_WITHOUT_GPU();
  ProblemSpec spec;
  spec.seq_lens = {40};
  spec.q_lens = {1};
  HostProblem host = testing::make_problem(spec);
  DeviceProblem dev(host);
  PagedAttentionArgs a = host.attention_args();
  a.cache = dev.cache(host.layout);
  a.cache.layout.head_dim = 96;
  EXPECT_THROW(paged_attention_splitkv(a, nullptr, nullptr), Error);
  EXPECT_THROW(paged_attention_prefill(a, nullptr), Error);
  EXPECT_THROW(paged_attention_prefill_fp8(a, nullptr), Error);
  a.cache.layout.head_dim = host.layout.head_dim;
  DeviceBuffer<uint8_t> out_fp8(size_t(host.total_queries) * spec.q_heads * host.layout.head_dim);
  a.out_fp8 = out_fp8.get();  // without its scales and workspace
  EXPECT_THROW(paged_attention_splitkv(a, nullptr, nullptr), Error);
  EXPECT_THROW(paged_attention_prefill_fp8(a, nullptr), Error);
  DeviceBuffer<float> out_fp8_scale(host.total_queries);
  DeviceBuffer<uint32_t> fp8_workspace(2 * host.total_queries);
  a.out_fp8_scale = out_fp8_scale.get();
  a.out_fp8_workspace = fp8_workspace.get();
  a.total_queries = host.total_queries;
  EXPECT_THROW(paged_attention_prefill(a, nullptr), Error);  // the mma.sync prefill has no FP8 output
  QkvQuantizeArgs qa = host.quantize_args();
  qa.cache = dev.cache(host.layout);
  qa.q_heads = 7;
  EXPECT_THROW(quantize_qkv(qa, nullptr), Error);
}

}  // namespace
}  // namespace fireq::attention
