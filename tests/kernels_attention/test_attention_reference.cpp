// CPU references of the attention path against exact (FP64) computations, with stated bounds.
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numbers>
#include <random>

#include "fireq/error.h"
#include "problem.h"

namespace fireq::attention {
namespace {

using testing::ErrorStats;
using testing::HostProblem;
using testing::ProblemSpec;

TEST(AttentionNumerics, F16EncodeMatchesCuda) {
  std::mt19937 rng(11);
  std::vector<float> values = {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e-8f, 2.98e-8f, 5.96e-8f,
                               6.1035156e-05f, 6.09e-05f, INFINITY, -INFINITY, NAN, 1.0f + 1.0f / 2048.0f};
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) values.push_back(bits_float(bits(rng)));
  for (const float x : values) {
    const __half h = __float2half_rn(x);
    uint16_t expected;
    std::memcpy(&expected, &h, sizeof expected);
    if ((expected & 0x7FFF) > 0x7C00) expected = 0x7FFF;  // any NaN: numerics.h's one NaN code
    ASSERT_EQ(f16_from_float(x), expected) << "x = " << x << " bits " << std::hex << float_bits(x);
  }
}

TEST(AttentionReference, RopeTableFollowsTheFormula) {
  const int d = 64, positions = 40;
  const auto plain = rope_cos_sin_table(d, 10000.0, RopeScalingLlama3{}, positions);
  for (int p = 0; p < positions; p += 7)
    for (int i = 0; i < d / 2; i += 5) {
      const double angle = p * std::pow(10000.0, -2.0 * i / d);
      EXPECT_EQ(plain[(p * d / 2 + i) * 2], static_cast<float>(std::cos(angle)));
      EXPECT_EQ(plain[(p * d / 2 + i) * 2 + 1], static_cast<float>(std::sin(angle)));
    }
  // Llama 3: the highest frequency is kept, the lowest divided by `factor`.
  const RopeScalingLlama3 llama3{true, 8.0, 1.0, 4.0, 8192};
  const auto scaled = rope_cos_sin_table(d, 500000.0, llama3, positions);
  const double low = std::pow(500000.0, -2.0 * (d / 2 - 1) / d) / 8.0;
  EXPECT_EQ(scaled[(31 * d / 2 + 0) * 2 + 1], static_cast<float>(std::sin(31.0)));
  EXPECT_EQ(scaled[(31 * d / 2 + d / 2 - 1) * 2 + 1], static_cast<float>(std::sin(31.0 * low)));
  EXPECT_THROW(rope_cos_sin_table(63, 1e4, RopeScalingLlama3{}, 8), Error);
}

// Each quantized value against the exactly rotated and scaled input: FP8 within half an e4m3 ulp
// (2^-4 relative, or 2^-10 of the scale in the subnormal range), INT4 within half a step.
TEST(AttentionReference, QuantizeQkvRotatesScalesAndPlacesEveryToken) {
  ProblemSpec spec;
  spec.q_heads = 6;
  spec.kv_heads = 3;
  spec.head_dim = 64;
  spec.page_size = 16;
  spec.seq_lens = {37, 5, 64};
  spec.q_lens = {1, 1, 1};
  HostProblem p = testing::make_problem(spec);
  quantize_qkv_reference(p.quantize_args());
  const int d = spec.head_dim, half = d / 2, group = spec.q_heads / spec.kv_heads;
  const int width = (spec.q_heads + 2 * spec.kv_heads) * d;
  const RopeScalingLlama3 llama3{true, 8.0, 1.0, 4.0, 8192};
  const auto table = rope_cos_sin_table(d, 500000.0, llama3, p.max_position);
  std::vector<double> x(d), rotated(d);
  std::vector<float> k(d), v(d);
  for (int t = 0; t < p.tokens; ++t) {
    const int pos = p.positions[t];
    auto rotate_exact = [&](int column_head) {
      for (int c = 0; c < d; ++c) x[c] = bf16_to_float(p.qkv[size_t(t) * width + column_head * d + c]);
      for (int i = 0; i < half; ++i) {
        const double cs = table[(pos * half + i) * 2], sn = table[(pos * half + i) * 2 + 1];
        rotated[i] = x[i] * cs - x[i + half] * sn;
        rotated[i + half] = x[i + half] * cs + x[i] * sn;
      }
    };
    for (int head = 0; head < spec.q_heads; ++head) {
      rotate_exact(head);
      const float scale = bf16_to_float(p.q_scale_all[size_t(t) * spec.q_heads + head]);
      for (int c = 0; c < d; ++c) {
        const double expected = rotated[c] / p.post_rope_k_scale[(head / group) * d + c];
        const double got = fp8_e4m3_to_float(p.q_all[(size_t(t) * spec.q_heads + head) * d + c]) * scale;
        ASSERT_LE(std::fabs(got - expected), std::fabs(expected) / 16 + scale / 1024 + 1e-6)
            << "q token " << t << " head " << head << " channel " << c;
      }
    }
    for (int h = 0; h < spec.kv_heads; ++h) {
      read_cached_token(p.cache(), p.sequences(), p.seq_index[t], pos, h, k.data(), v.data());
      rotate_exact(spec.q_heads + h);
      double k_absmax = 0.0, v_absmax = 0.0;
      for (int c = 0; c < d; ++c) k_absmax = std::max(k_absmax, std::fabs(rotated[c] * p.post_rope_k_scale[h * d + c]));
      for (int c = 0; c < d; ++c) {
        const double expected = rotated[c] * p.post_rope_k_scale[h * d + c];
        ASSERT_LE(std::fabs(k[c] - expected), k_absmax / 7 * 0.51 + 1e-5) << "k token " << t << " head " << h;
      }
      for (int c = 0; c < d; ++c)
        v_absmax = std::max(v_absmax, double(std::fabs(bf16_to_float(p.qkv[size_t(t) * width + (spec.q_heads + spec.kv_heads + h) * d + c]))));
      for (int c = 0; c < d; ++c) {
        const double expected = bf16_to_float(p.qkv[size_t(t) * width + (spec.q_heads + spec.kv_heads + h) * d + c]);
        ASSERT_LE(std::fabs(v[c] - expected), v_absmax / 7 * 0.51 + 1e-5) << "v token " << t << " head " << h;
      }
    }
  }
}

struct AttentionCase {
  const char* name;
  int q_heads, kv_heads, head_dim, page_size;
  std::vector<int> seq_lens, q_lens;
};

std::vector<AttentionCase> attention_cases() {
  return {
      {"decode_llama3_gqa32_8", 32, 8, 128, 64, {300, 129}, {1, 1}},
      {"decode_two_new_tokens_gqa64_8", 64, 8, 128, 16, {70}, {2}},
      {"smollm2_gqa9_3_d64_varlen_prefill", 9, 3, 64, 32, {45, 130, 7}, {45, 130, 7}},
      {"chunked_prefill_over_prefix", 8, 2, 128, 16, {200, 90}, {37, 90}},
  };
}

// Kernel numerics (quantized inputs, P rounded as the kernel does) against FP64 softmax attention
// over the same dequantized inputs: only P's rounding, FP32 sums and the BF16 output differ.
// Bounds: fp16 P: max error <= 2^-8 of max |output| (the BF16 output rounding alone is 2^-9);
// fp8_tile P: relative L2 error <= 4e-2 (e4m3's 3-bit mantissa on every weight; measured ~2.5e-2).
TEST(AttentionReference, MatchesFp64AttentionOnDequantizedInputs) {
  for (const AttentionCase& c : attention_cases()) {
    for (const PRounding rounding : {PRounding::fp16, PRounding::fp8_tile}) {
      ProblemSpec spec{c.q_heads, c.kv_heads, c.head_dim, c.page_size, c.seq_lens, c.q_lens};
      spec.seed = static_cast<uint32_t>(std::random_device{}());
      HostProblem p = testing::make_problem(spec);
      quantize_qkv_reference(p.quantize_args());
      testing::gather_queries(p);
      paged_attention_reference(p.attention_args(), rounding);
      for (size_t b = 0; b < spec.seq_lens.size(); ++b) {
        std::vector<float> qf, kf, vf;
        p.dequantized(static_cast<int>(b), qf, kf, vf);
        const int nq = spec.q_lens[b];
        const auto ref = attention_fp64(qf.data(), kf.data(), vf.data(), nq, spec.seq_lens[b], spec.q_heads,
                                        spec.kv_heads, spec.head_dim, 1.0 / std::sqrt(double(spec.head_dim)));
        const ErrorStats s = testing::compare(p.out, ref, size_t(p.query_start[b]) * spec.q_heads * spec.head_dim);
        SCOPED_TRACE(::testing::Message() << c.name << " seq " << b << " rounding "
                                          << (rounding == PRounding::fp16 ? "fp16" : "fp8_tile") << " seed " << spec.seed);
        ASSERT_TRUE(s.finite);
        if (rounding == PRounding::fp16) {
          EXPECT_LE(s.max_abs, s.ref_max / 256);
        } else {
          EXPECT_LE(s.rel_l2, 4e-2);
        }
      }
    }
  }
}

// The FP8 copy of the output: one scale per token over all heads (bf16(absmax / 448)), every value
// within half an e4m3 step of its BF16 output (relative 2^-4 in the normal range; the subnormal step
// 2^-9 scale below it).
TEST(AttentionReference, Fp8OutputQuantizesEachTokenOverAllHeads) {
  ProblemSpec spec{9, 3, 64, 16, {70, 33}, {20, 33}};
  spec.seed = static_cast<uint32_t>(std::random_device{}());
  SCOPED_TRACE(::testing::Message() << "seed " << spec.seed);
  HostProblem p = testing::make_problem(spec);
  quantize_qkv_reference(p.quantize_args());
  testing::gather_queries(p);
  const size_t row = size_t(spec.q_heads) * spec.head_dim;
  std::vector<uint8_t> codes(p.total_queries * row);
  std::vector<float> scales(p.total_queries);
  PagedAttentionArgs a = p.attention_args();
  a.out_fp8 = codes.data();
  a.out_fp8_scale = scales.data();
  uint32_t unused_workspace = 0;  // the reference needs none, the shape check wants one
  a.out_fp8_workspace = &unused_workspace;
  a.total_queries = p.total_queries;
  paged_attention_reference(a, PRounding::fp8_tile);
  for (int token = 0; token < p.total_queries; ++token) {
    float absmax = 0.0f;
    for (size_t i = 0; i < row; ++i) absmax = std::max(absmax, std::fabs(bf16_to_float(p.out[token * row + i])));
    ASSERT_GT(absmax, 0.0f);
    EXPECT_EQ(scales[token], round_to_bf16(absmax / kFp8E4M3Max)) << "token " << token;
    for (size_t i = 0; i < row; ++i) {
      const float x = bf16_to_float(p.out[token * row + i]);
      const float back = fp8_e4m3_to_float(codes[token * row + i]) * scales[token];
      ASSERT_LE(std::fabs(back - x), std::fabs(x) / 16 + scales[token] * 0x1p-10f) << "token " << token << " i " << i;
    }
  }
  a.total_queries = p.total_queries + 1;
  EXPECT_THROW(paged_attention_reference(a, PRounding::fp8_tile), Error);
  a.out_fp8_scale = nullptr;
  EXPECT_THROW(paged_attention_reference(a, PRounding::fp8_tile), Error);
}

// The scale format of the cache, chosen by this measurement: INT4 K/V with a BF16 or an e4m3 scale
// against unquantized FP64 attention (64 queries over 512 keys, errors pooled). Only V is quantized
// here (K's error would mask the difference), at row magnitudes from 1 down to 0.002 (small models
// have such heads). Measured: equal within noise down to 0.02; below, e4m3's scale runs into its
// subnormal range (step 2^-9) and its error grows several-fold, BF16's does not.
TEST(AttentionReference, Bf16KvScaleIsAtLeastAsAccurateAsFp8) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int d = 128, n = 512, queries = 64;
  for (const float v_magnitude : {1.0f, 0.1f, 0.02f, 0.002f}) {
    std::vector<float> q(size_t(queries) * d), k(size_t(n) * d), v(size_t(n) * d);
    for (float& x : q) x = normal(rng);
    for (float& x : k) x = normal(rng) * 1.5f;
    for (float& x : v) x = normal(rng) * v_magnitude;
    const double scale = 1.0 / std::sqrt(double(d));
    // Queries see all keys: pass seq_len + queries - 1 rows of which the last `queries` are queries.
    auto attend = [&](const std::vector<float>& kk, const std::vector<float>& vv) {
      std::vector<double> out;
      for (int i = 0; i < queries; ++i) {
        const auto o = attention_fp64(&q[size_t(i) * d], kk.data(), vv.data(), 1, n, 1, 1, d, scale);
        out.insert(out.end(), o.begin(), o.end());
      }
      return out;
    };
    const auto exact = attend(k, v);
    double err[2];
    for (int kind = 0; kind < 2; ++kind) {
      auto quantize_rows = [&](const std::vector<float>& in) {
        std::vector<float> out(in.size());
        for (int t = 0; t < n; ++t) {
          float absmax = 0.0f;
          for (int c = 0; c < d; ++c) absmax = std::max(absmax, std::fabs(in[size_t(t) * d + c]));
          const float s = kind == 0 ? kv_int4_scale_bf16(absmax) : kv_int4_scale_e4m3(absmax);
          for (int c = 0; c < d; ++c) out[size_t(t) * d + c] = int4_quantize(in[size_t(t) * d + c], s) * s;
        }
        return out;
      };
      const auto got = attend(k, quantize_rows(v));
      double num = 0.0, den = 0.0;
      for (size_t i = 0; i < got.size(); ++i) {
        num += (got[i] - exact[i]) * (got[i] - exact[i]);
        den += exact[i] * exact[i];
      }
      err[kind] = std::sqrt(num / den);
    }
    std::printf("|V| ~ %.3f: INT4 KV, relative L2 error of the output: BF16 scales %.4f, e4m3 scales %.4f\n",
                v_magnitude, err[0], err[1]);
    EXPECT_LE(err[0], err[1] * (v_magnitude >= 0.02f ? 1.15 : 0.5)) << "|V| ~ " << v_magnitude;
  }
}

TEST(AttentionReference, RejectsBadArguments) {
  ProblemSpec spec;
  spec.seq_lens = {40};
  spec.q_lens = {1};
  HostProblem p = testing::make_problem(spec);
  quantize_qkv_reference(p.quantize_args());
  testing::gather_queries(p);
  auto expect_error = [](auto&& call, const char* words) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning '" << words << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  {
    auto a = p.attention_args();
    a.cache.layout.head_dim = 96;
    expect_error([&] { paged_attention_reference(a, PRounding::fp16); }, "head_dim 96");
  }
  {
    auto a = p.attention_args();
    a.cache.layout.page_size = 24;
    expect_error([&] { paged_attention_reference(a, PRounding::fp16); }, "page_size 24");
  }
  {
    auto a = p.attention_args();
    a.q_heads = 7;
    expect_error([&] { paged_attention_reference(a, PRounding::fp16); }, "q_heads 7");
  }
  {
    const int saved = p.block_table[1];
    p.block_table[1] = p.layout.num_pages;
    auto a = p.attention_args();
    expect_error([&] { paged_attention_reference(a, PRounding::fp16); }, "outside the pool");
    p.block_table[1] = saved;
  }
  {
    p.seq_lens[0] = 41;
    auto a = p.attention_args();
    expect_error([&] { paged_attention_reference(a, PRounding::fp16); }, "seq_lens[0] = 41");
    p.seq_lens[0] = 40;
  }
  {
    auto a = p.quantize_args();
    std::swap(p.positions[3], p.positions[4]);
    expect_error([&] { quantize_qkv_reference(a); }, "consecutive");
    std::swap(p.positions[3], p.positions[4]);
    p.positions[5] = p.max_position;
    expect_error([&] { quantize_qkv_reference(a); }, "RoPE table");
  }
}

}  // namespace
}  // namespace fireq::attention
