#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fireq/kernels/attention.h"
#include "fireq/kernels/gemm_reference.h"
#include "fireq/numerics.h"
#include "fireq/quant.h"
#include "tiny_model.h"

namespace fireq {
namespace {

QuantRecipe w4a8(int group, bool per_tensor) {
  QuantRecipe r;
  r.quantize_weights = true;
  r.group_size = group;
  r.per_tensor_scale = per_tensor;
  r.activations = ActivationDType::kFp8E4M3PerToken;
  return r;
}

TEST(QuantSimulate, Int4WeightsEqualTheGemmReferencePacking) {
  std::mt19937 rng(1);
  const FloatTensor w = testing::random_tensor({48, 256}, 0.05, rng);
  Matrix64 m(48, 256);
  std::copy(w.data.begin(), w.data.end(), m.data.begin());
  const Int4Linear mine = quantize_int4_linear(m, nullptr, w4a8(128, false), "t");
  const gemm::Int4Weights theirs = gemm::quantize_int4_weights(w.data.data(), 48, 256, 128);
  EXPECT_EQ(mine.packed, theirs.packed);
  EXPECT_EQ(mine.scales_fp8, theirs.scales);
}

TEST(QuantSimulate, W4A8LinearMatchesTheGemmReferenceIncludingInverseTensorScale) {
  std::mt19937 rng(2);
  const int n = 40, k = 192, tokens = 7;
  const FloatTensor w = testing::random_tensor({n, k}, 0.002, rng);  // small: s_t > 1
  Matrix64 m(n, k);
  std::copy(w.data.begin(), w.data.end(), m.data.begin());
  const Int4Linear q = quantize_int4_linear(m, nullptr, w4a8(64, true), "t");
  ASSERT_GT(q.tensor_scale_exponent, 0);

  QuantizedModel one;
  one.layers.resize(1);
  QuantizedLinear linear;
  linear.is_int4 = true;
  linear.int4 = q;
  FloatTensor effective;
  effective.shape = {n, k};
  effective.data = q.dequantize();
  for (float& v : effective.data) v *= q.inv_tensor_scale();
  const SimulatedLinear sim(effective, nullptr, ActivationDType::kFp8E4M3PerToken, false, "t");

  const FloatTensor x = testing::random_tensor({tokens, k}, 2.0, rng);
  std::vector<float> y(static_cast<size_t>(tokens) * n);
  sim.forward(x.data.data(), tokens, y.data());

  const gemm::Int4Weights gw{n, k, 64, q.packed, q.scales_fp8};
  const gemm::Fp8Activations gx = gemm::quantize_fp8_rows(x.data.data(), tokens, k);
  const std::vector<float> ref = gemm::gemm_accumulate_reference(gx, gw, q.inv_tensor_scale());
  double max_ref = 0;
  for (const float v : ref) max_ref = std::max(max_ref, static_cast<double>(std::fabs(v)));
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-5 * max_ref) << i;

  // Forgetting 1/s_t (the reference project's fused-path bug) is far off.
  const std::vector<float> forgot = gemm::gemm_accumulate_reference(gx, gw, 1.0f);
  EXPECT_GT(std::fabs(forgot[0] - y[0]), 0.5 * std::fabs(y[0]));
}

TEST(QuantSimulate, W4A16RoundsActivationsToBf16AndQkvOutputsToBf16) {
  std::mt19937 rng(3);
  const FloatTensor w = testing::random_tensor({8, 64}, 0.1, rng);
  const FloatTensor x = testing::random_tensor({3, 64}, 1.0, rng);
  const SimulatedLinear sim(w, nullptr, ActivationDType::kBf16, true, "t");
  std::vector<float> y(24);
  sim.forward(x.data.data(), 3, y.data());
  for (int t = 0; t < 3; ++t)
    for (int o = 0; o < 8; ++o) {
      double acc = 0;
      for (int i = 0; i < 64; ++i) acc += static_cast<double>(round_to_bf16(x.data[t * 64 + i])) * w.data[o * 64 + i];
      EXPECT_EQ(y[t * 8 + o], round_to_bf16(y[t * 8 + o]));
      EXPECT_NEAR(y[t * 8 + o], acc, 0.01 * std::fabs(acc) + 1e-4);
    }
}

TEST(QuantSimulate, AttentionNumericsQuantizeQueriesPerHeadAndKvPerTokenHead) {
  LlamaConfig c;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  std::mt19937 rng(4);
  for (const ScaleDType dtype : {ScaleDType::kBf16, ScaleDType::kFp8E4M3}) {
    LayerAttentionNumerics layer;
    layer.fp8_queries = layer.int4_kv = true;
    layer.kv_scale_dtype = dtype;
    const FireqAttentionNumerics numerics(c, {layer});
    const int tokens = 5;
    FloatTensor q = testing::random_tensor({tokens, 64}, 1.0, rng);
    FloatTensor k = testing::random_tensor({tokens, 32}, 3.0, rng);
    FloatTensor v = testing::random_tensor({tokens, 32}, 0.05, rng);
    const FloatTensor q0 = q, k0 = k, v0 = v;
    numerics.queries(0, q.data.data(), tokens);
    numerics.keys_values(0, k.data.data(), v.data.data(), tokens);
    for (int row = 0; row < tokens * 4; ++row) {  // (token, head) rows of 16
      float absmax = 0;
      for (int i = 0; i < 16; ++i) absmax = std::max(absmax, std::fabs(q0.data[row * 16 + i]));
      const float scale = fp8_token_scale(absmax);
      for (int i = 0; i < 16; ++i)
        EXPECT_EQ(q.data[row * 16 + i], fp8_e4m3_to_float(fp8_e4m3_from_float(q0.data[row * 16 + i] / scale)) * scale);
    }
    for (const auto* pair : {&k, &v}) {
      const FloatTensor& orig = pair == &k ? k0 : v0;
      for (int row = 0; row < tokens * 2; ++row) {
        float absmax = 0;
        for (int i = 0; i < 16; ++i) absmax = std::max(absmax, std::fabs(orig.data[row * 16 + i]));
        const float scale = dtype == ScaleDType::kBf16 ? attention::kv_int4_scale_bf16(absmax)
                                                       : attention::kv_int4_scale_e4m3(absmax);
        for (int i = 0; i < 16; ++i) {
          const float got = (*pair).data[row * 16 + i];
          EXPECT_EQ(got, static_cast<float>(int4_quantize(orig.data[row * 16 + i], scale)) * scale);
        }
      }
    }
    // Layers beyond the configured ones are left alone.
    FloatTensor q1 = q0;
    numerics.queries(1, q1.data.data(), tokens);
    EXPECT_EQ(q1.data, q0.data);
  }
}

TEST(QuantSimulate, PostRopeScalingKeepsScoresAndScalesKeysBeforeQuantization) {
  LlamaConfig c;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  std::mt19937 rng(5);
  LayerAttentionNumerics layer;
  layer.post_rope_scale.assign(32, 1.0f);
  layer.post_rope_scale[3] = layer.post_rope_scale[11] = 0.125f;  // a pair of KV head 0
  layer.post_rope_scale[16 + 5] = layer.post_rope_scale[16 + 13] = 4.0f;
  const FireqAttentionNumerics numerics(c, {layer});
  FloatTensor q = testing::random_tensor({2, 64}, 1.0, rng);
  FloatTensor k = testing::random_tensor({2, 32}, 1.0, rng);
  FloatTensor v = testing::random_tensor({2, 32}, 1.0, rng);
  const FloatTensor q0 = q, k0 = k, v0 = v;
  numerics.queries(0, q.data.data(), 2);
  numerics.keys_values(0, k.data.data(), v.data.data(), 2);
  EXPECT_EQ(v.data, v0.data);
  EXPECT_FLOAT_EQ(k.data[3], k0.data[3] * 0.125f);
  EXPECT_FLOAT_EQ(q.data[16 + 11], q0.data[16 + 11] / 0.125f);  // query head 1 reads KV head 0
  for (int hq = 0; hq < 4; ++hq) {
    const int hk = hq / 2;
    double before = 0, after = 0;
    for (int i = 0; i < 16; ++i) {
      before += static_cast<double>(q0.data[hq * 16 + i]) * k0.data[32 + hk * 16 + i];
      after += static_cast<double>(q.data[hq * 16 + i]) * k.data[32 + hk * 16 + i];
    }
    EXPECT_NEAR(before, after, 1e-5);
  }
}

}  // namespace
}  // namespace fireq
