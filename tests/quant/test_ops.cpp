#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/quant_ops.h"

namespace fireq {
namespace {

QuantRecipe w4_recipe(int group_size, bool per_tensor) {
  QuantRecipe r;
  r.quantize_weights = true;
  r.group_size = group_size;
  r.per_tensor_scale = per_tensor;
  return r;
}

Matrix64 random_matrix(int64_t rows, int64_t cols, double scale, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, scale);
  Matrix64 m(rows, cols);
  for (double& v : m.data) v = normal(rng);
  return m;
}

TEST(QuantInt4, HandCheckedGroupScaleAndRounding) {
  // Group absmax 7.4375: 7.4375 / 7 = 1.0625 is halfway between the e4m3 values 1 and 1.125 and
  // rounds to even, so sigma = 1 and q = round_half_even(w), clamped to [-8, 7].
  Matrix64 w(1, 64);
  const double values[] = {7.4375, 2.5, 3.5, -2.5, -7.0, 0.49, -8.4, 0.0};
  for (int i = 0; i < 8; ++i) w.data[i] = values[i];
  w.data[6] = -7.4;  // keep the absmax at 7.4375
  const Int4Linear q = quantize_int4_linear(w, nullptr, w4_recipe(64, false), "t");
  ASSERT_EQ(q.scales_fp8.size(), 1u);
  EXPECT_EQ(fp8_e4m3_to_float(q.scales_fp8[0]), 1.0f);
  const int expected[] = {7, 2, 4, -2, -7, 0, -7, 0};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(int4_at(q.packed.data(), i), expected[i]) << i;
  EXPECT_EQ(q.packed[0], int4_pack(7, 2));
}

TEST(QuantInt4, TinyGroupsUnderflowWithoutTheTensorScaleAndNotWithIt) {
  std::mt19937 rng(11);
  Matrix64 w = random_matrix(4, 128, 1e-4, rng);  // sigma = absmax / 7 far below 2^-9
  const Int4Linear plain = quantize_int4_linear(w, nullptr, w4_recipe(64, false), "t");
  for (const uint8_t code : plain.scales_fp8) EXPECT_EQ(code, 0x01);  // clamped to 2^-9
  EXPECT_EQ(plain.tensor_scale_exponent, 0);
  const Int4Linear scaled = quantize_int4_linear(w, nullptr, w4_recipe(64, true), "t");
  EXPECT_GT(scaled.tensor_scale_exponent, 5);
  const std::vector<float> deq = scaled.dequantize();
  double err = 0, norm = 0;
  for (size_t i = 0; i < deq.size(); ++i) {
    err += std::pow(deq[i] * scaled.inv_tensor_scale() - w.data[i], 2);
    norm += w.data[i] * w.data[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.2);  // INT4 with 8-16 levels per group
}

TEST(QuantInt4, TensorScaleSearchHandChecked) {
  // absmax 0.001 needs s >= 2^4 to reach w_min = 7/512 = 0.0137; absmax 1 overflows 448 at 2^9.
  TensorScaleChoice c = choose_tensor_scale({0.001, 1.0});
  EXPECT_EQ(c.exponent, 4);
  EXPECT_DOUBLE_EQ(c.underflow, 0.0);
  EXPECT_NEAR(c.underflow_at_one, (kInt4GroupMinAbsmax - 0.001) / kInt4GroupMinAbsmax, 1e-12);
  // Overflow stops the search before underflow is cured: the best candidate is the last one.
  c = choose_tensor_scale({1e-6, 100.0});
  EXPECT_EQ(c.exponent, 2);  // 100 * 8 > 448
  // Already overflowing at 1: stay at 1. No underflow at all: stay at 1.
  EXPECT_EQ(choose_tensor_scale({1e-6, 500.0}).exponent, 0);
  EXPECT_EQ(choose_tensor_scale({0.5, 1.0}).exponent, 0);
  // Capped at 2^14.
  EXPECT_EQ(choose_tensor_scale({1e-9}).exponent, 14);
  // The normal-range floor 7 * 2^-6 = 0.109 asks more: 0.05 needs 2^2 (0.2), 2^1 (0.1) is not enough.
  EXPECT_EQ(choose_tensor_scale({0.05, 1.0}).exponent, 0);
  EXPECT_EQ(choose_tensor_scale({0.05, 1.0}, kInt4GroupMinNormalAbsmax).exponent, 2);
}

TEST(QuantInt4, BiasIsScaledAndWeightsClampedTo448) {
  Matrix64 w(1, 64);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-1, 1);
  for (double& v : w.data) v = u(rng);
  w.data[5] = 1000.0;  // clamped to 448 before the scale is taken
  const std::vector<double> bias = {0.75};
  const Int4Linear q = quantize_int4_linear(w, &bias, w4_recipe(64, true), "t");
  EXPECT_EQ(q.tensor_scale_exponent, 0);  // 1000 overflows at every candidate
  EXPECT_EQ(fp8_e4m3_to_float(q.scales_fp8[0]), fp8_e4m3_to_float(fp8_e4m3_from_float(448.0f / 7.0f)));
  EXPECT_EQ(int4_at(q.packed.data(), 5), 7);
  ASSERT_EQ(q.bias.size(), 1u);
  EXPECT_FLOAT_EQ(q.bias[0], 0.75f);

  Matrix64 small = w;
  small.data[5] = 0.0;
  for (double& v : small.data) v *= 1e-3;
  const Int4Linear s = quantize_int4_linear(small, &bias, w4_recipe(64, true), "t");
  ASSERT_GT(s.tensor_scale_exponent, 0);
  EXPECT_FLOAT_EQ(s.bias[0], 0.75f * std::ldexp(1.0f, s.tensor_scale_exponent));
}

TEST(QuantInt4, KNotAMultipleOfTheGroupIsRefusedOrZeroPadded) {
  std::mt19937 rng(5);
  const Matrix64 w = random_matrix(3, 96, 0.05, rng);
  try {
    quantize_int4_linear(w, nullptr, w4_recipe(64, false), "model.layers.0.mlp.up_proj");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("96"), std::string::npos);
  }
  QuantRecipe pad = w4_recipe(64, false);
  pad.k_remainder = KRemainder::kZeroPad;
  const Int4Linear q = quantize_int4_linear(w, nullptr, pad, "t");
  EXPECT_EQ(q.padded_in_features, 128);
  EXPECT_EQ(q.packed.size(), 3u * 64u);
  for (int n = 0; n < 3; ++n)
    for (int k = 96; k < 128; ++k) EXPECT_EQ(int4_at(q.packed.data() + n * 64, k), 0);
  // The padded groups do not change the real ones: same as quantizing the first 64 columns alone.
  Matrix64 head(3, 64);
  for (int n = 0; n < 3; ++n)
    for (int k = 0; k < 64; ++k) head.row(n)[k] = w.row(n)[k];
  const Int4Linear h = quantize_int4_linear(head, nullptr, w4_recipe(64, false), "t");
  for (int n = 0; n < 3; ++n) {
    EXPECT_EQ(h.scales_fp8[n], q.scales_fp8[n * 2]);
    for (int k = 0; k < 64; ++k) EXPECT_EQ(int4_at(h.packed.data() + n * 32, k), int4_at(q.packed.data() + n * 64, k));
  }
  EXPECT_EQ(q.dequantize().size(), 3u * 96u);
}

TEST(QuantInt4, NonFiniteWeightsAreRefusedWithTheTensorNamed) {
  std::mt19937 rng(6);
  Matrix64 w = random_matrix(2, 64, 1, rng);
  w.data[70] = std::nan("");
  try {
    quantize_int4_linear(w, nullptr, w4_recipe(64, false), "model.layers.3.self_attn.k_proj");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.self_attn.k_proj"), std::string::npos);
  }
  w.data[70] = INFINITY;
  EXPECT_THROW(quantize_int4_linear(w, nullptr, w4_recipe(64, false), "t"), Error);
}

TEST(QuantInt4, DequantizedErrorIsWithinHalfAStepAndBf16ScalesWork) {
  std::mt19937 rng(7);
  const Matrix64 w = random_matrix(8, 256, 0.02, rng);
  for (const ScaleDType dtype : {ScaleDType::kFp8E4M3, ScaleDType::kBf16}) {
    QuantRecipe r = w4_recipe(128, true);
    r.weight_scale_dtype = dtype;
    const Int4Linear q = quantize_int4_linear(w, nullptr, r, "t");
    const std::vector<float> deq = q.dequantize();
    const double s_t = std::ldexp(1.0, q.tensor_scale_exponent);
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t k = 0; k < 256; ++k) {
        const double sigma = q.group_scale(n, k / 128);
        const double x = w.row(n)[k] * s_t;
        // Inside the grid: half a step. Beyond 7.5 sigma (absmax rounded down): clamped to 7 sigma.
        const double bound = std::max(0.5 * sigma, std::fabs(x) - 7 * sigma) + 1e-6;
        EXPECT_LE(std::fabs(deq[n * 256 + k] - x), bound);
      }
  }
}

TEST(QuantInt4, MseScaleSearchNeverRaisesAGroupsErrorAndLowersTheTotal) {
  std::mt19937 rng(11);
  // Heavy-tailed rows (a few large weights per group), where clipping them pays.
  Matrix64 w = random_matrix(16, 512, 0.02, rng);
  std::uniform_int_distribution<int> column(0, 511);
  for (int64_t n = 0; n < 16; ++n)
    for (int i = 0; i < 6; ++i) w.row(n)[column(rng)] *= 6.0;
  for (const ScaleDType dtype : {ScaleDType::kFp8E4M3, ScaleDType::kBf16}) {
    QuantRecipe r = w4_recipe(64, true);
    r.weight_scale_dtype = dtype;
    const Int4Linear absmax = quantize_int4_linear(w, nullptr, r, "t");
    r.group_scale_search = GroupScaleSearch::kMse;
    const Int4Linear mse = quantize_int4_linear(w, nullptr, r, "t");
    ASSERT_EQ(mse.tensor_scale_exponent, absmax.tensor_scale_exponent);
    const std::vector<float> a = absmax.dequantize(), b = mse.dequantize();
    const double s_t = std::ldexp(1.0, absmax.tensor_scale_exponent);
    double total_absmax = 0, total_mse = 0;
    int smaller_scales = 0;
    for (int64_t n = 0; n < 16; ++n)
      for (int64_t g = 0; g < 512 / 64; ++g) {
        double error_absmax = 0, error_mse = 0;
        for (int64_t k = g * 64; k < (g + 1) * 64; ++k) {
          const double x = w.row(n)[k] * s_t;
          error_absmax += (a[n * 512 + k] - x) * (a[n * 512 + k] - x);
          error_mse += (b[n * 512 + k] - x) * (b[n * 512 + k] - x);
        }
        EXPECT_LE(error_mse, error_absmax * (1 + 1e-9)) << "row " << n << " group " << g;
        EXPECT_LE(mse.group_scale(n, g), absmax.group_scale(n, g)) << "the search only looks below absmax / 7";
        smaller_scales += mse.group_scale(n, g) < absmax.group_scale(n, g);
        total_absmax += error_absmax;
        total_mse += error_mse;
      }
    EXPECT_GT(smaller_scales, 0);
    EXPECT_LT(total_mse, 0.95 * total_absmax) << "clipping the outliers must pay on these rows";
  }
}

// ---------------------------------------------------------------------------------------------
// A float64 decoder layer, for checking that the transformations leave the outputs unchanged.
LlamaConfig tiny_config() {
  LlamaConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-6;
  return c;
}

LayerF64 random_layer(const LlamaConfig& c, std::mt19937& rng, bool biases) {
  LayerF64 l;
  std::uniform_real_distribution<double> gamma(0.5, 1.5);
  for (int i = 0; i < c.hidden_size; ++i) {
    l.attn_norm.push_back(gamma(rng));
    l.ffn_norm.push_back(gamma(rng));
  }
  l.wq = random_matrix(c.q_dim(), c.hidden_size, 0.2, rng);
  l.wk = random_matrix(c.kv_dim(), c.hidden_size, 0.2, rng);
  l.wv = random_matrix(c.kv_dim(), c.hidden_size, 0.2, rng);
  l.wo = random_matrix(c.hidden_size, c.q_dim(), 0.2, rng);
  l.w_gate = random_matrix(c.intermediate_size, c.hidden_size, 0.2, rng);
  l.w_up = random_matrix(c.intermediate_size, c.hidden_size, 0.2, rng);
  l.w_down = random_matrix(c.hidden_size, c.intermediate_size, 0.2, rng);
  if (biases) {
    l.bq = random_matrix(c.q_dim(), 1, 0.1, rng).data;
    l.bk = random_matrix(c.kv_dim(), 1, 0.1, rng).data;
    l.bv = random_matrix(c.kv_dim(), 1, 0.1, rng).data;
  }
  return l;
}

std::vector<double> matvec(const Matrix64& w, const std::vector<double>& x, const std::vector<double>& b) {
  std::vector<double> y(static_cast<size_t>(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    double acc = b.empty() ? 0.0 : b[r];
    for (int64_t c = 0; c < w.cols; ++c) acc += w.row(r)[c] * x[c];
    y[r] = acc;
  }
  return y;
}

std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<double>& gamma, double eps) {
  double ss = 0;
  for (const double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * gamma[i];
  return y;
}

void rope(std::vector<double>& v, int heads, int d, int pos, double theta) {
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < d / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / d);
      double& a = v[h * d + i];
      double& b = v[h * d + i + d / 2];
      const double x = a, y = b;
      a = x * std::cos(angle) - y * std::sin(angle);
      b = y * std::cos(angle) + x * std::sin(angle);
    }
}

// Causal decoder layer over `tokens` rows of hidden states; S (post-RoPE) scales k and divides q.
std::vector<std::vector<double>> layer_forward(const LayerF64& l, const LlamaConfig& c,
                                               const std::vector<std::vector<double>>& x,
                                               const std::vector<float>& post_rope = {}) {
  const int d = c.head_dim, group = c.gqa_group();
  std::vector<std::vector<double>> q, k, v, out;
  for (size_t t = 0; t < x.size(); ++t) {
    const auto h = rms_norm(x[t], l.attn_norm, c.rms_norm_eps);
    q.push_back(matvec(l.wq, h, l.bq));
    k.push_back(matvec(l.wk, h, l.bk));
    v.push_back(matvec(l.wv, h, l.bv));
    rope(q[t], c.num_attention_heads, d, static_cast<int>(t), c.rope_theta);
    rope(k[t], c.num_key_value_heads, d, static_cast<int>(t), c.rope_theta);
    if (!post_rope.empty()) {
      for (int hq = 0; hq < c.num_attention_heads; ++hq)
        for (int i = 0; i < d; ++i) q[t][hq * d + i] /= post_rope[(hq / group) * d + i];
      for (int i = 0; i < c.kv_dim(); ++i) k[t][i] *= post_rope[i];
    }
  }
  for (size_t t = 0; t < x.size(); ++t) {
    std::vector<double> attn(static_cast<size_t>(c.q_dim()), 0.0);
    for (int hq = 0; hq < c.num_attention_heads; ++hq) {
      const int hk = hq / group;
      std::vector<double> s(t + 1);
      double m = -1e300, z = 0;
      for (size_t u = 0; u <= t; ++u) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += q[t][hq * d + i] * k[u][hk * d + i];
        s[u] = dot / std::sqrt(static_cast<double>(d));
        m = std::max(m, s[u]);
      }
      for (size_t u = 0; u <= t; ++u) z += s[u] = std::exp(s[u] - m);
      for (size_t u = 0; u <= t; ++u)
        for (int i = 0; i < d; ++i) attn[hq * d + i] += s[u] / z * v[u][hk * d + i];
    }
    auto h = x[t];
    const auto o = matvec(l.wo, attn, {});
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    const auto n = rms_norm(h, l.ffn_norm, c.rms_norm_eps);
    const auto g = matvec(l.w_gate, n, {});
    auto u = matvec(l.w_up, n, {});
    for (size_t i = 0; i < u.size(); ++i) u[i] *= g[i] / (1.0 + std::exp(-g[i]));
    const auto down = matvec(l.w_down, u, {});
    for (size_t i = 0; i < h.size(); ++i) h[i] += down[i];
    out.push_back(h);
  }
  return out;
}

double max_abs_diff(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  double m = 0;
  for (size_t t = 0; t < a.size(); ++t)
    for (size_t i = 0; i < a[t].size(); ++i) m = std::max(m, std::fabs(a[t][i] - b[t][i]));
  return m;
}

std::vector<std::vector<double>> random_tokens(const LlamaConfig& c, int n, std::mt19937& rng) {
  std::vector<std::vector<double>> x(static_cast<size_t>(n));
  for (auto& row : x) row = random_matrix(c.hidden_size, 1, 1.0, rng).data;
  return x;
}

TEST(QuantTransforms, SmoothingAndVMulLeaveTheLayerOutputUnchangedInFp64) {
  const LlamaConfig c = tiny_config();
  std::mt19937 rng(21);
  for (const int scale_type : {0, 1, 2}) {
    const LayerF64 original = random_layer(c, rng, /*biases=*/true);
    const auto x = random_tokens(c, 6, rng);
    QuantRecipe r;
    r.v_mul = 0.9;
    r.smooth_qkv = {true, scale_type, 0.3};
    r.smooth_o = {true, scale_type, 0.2};
    r.smooth_gate_up = {true, scale_type, 0.0096};
    r.smooth_down = {true, scale_type, 0.015};
    LayerF64 smoothed = original;
    apply_weight_transforms(smoothed, c, r);
    EXPECT_GT(std::fabs(smoothed.w_up.data[0] - original.w_up.data[0]), 1e-6);  // it did something
    EXPECT_LT(max_abs_diff(layer_forward(original, c, x), layer_forward(smoothed, c, x)), 1e-11)
        << "scale_type " << scale_type;
  }
}

TEST(QuantTransforms, SmoothingScalesFollowTheWeightStatistics) {
  Matrix64 a(2, 3), b(1, 3);
  a.data = {1, -4, 0, 3, 2, 0};
  b.data = {-2, 0, 0};
  EXPECT_EQ(smoothing_scales({&a, &b}, {true, 2, 6.0}), (std::vector<double>{3.0, 3.0, 1.0}));
  EXPECT_EQ(smoothing_scales({&a, &b}, {true, 1, 6.0}), (std::vector<double>{2.0, 1.5, 1.0}));
  EXPECT_EQ(smoothing_scales({&a, &b}, {true, 0, 6.0}), (std::vector<double>{6.0, 6.0, 6.0}));
}

TEST(QuantTransforms, PreRopeScalingIsExactAndOnlyPairConstantScalesAre) {
  const LlamaConfig c = tiny_config();
  std::mt19937 rng(31);
  const LayerF64 original = random_layer(c, rng, /*biases=*/true);
  const auto x = random_tokens(c, 7, rng);
  std::uniform_real_distribution<double> u(0.1, 10);
  std::vector<double> n(static_cast<size_t>(c.kv_dim()));
  for (int h = 0; h < c.num_key_value_heads; ++h)
    for (int i = 0; i < c.head_dim / 2; ++i) n[h * c.head_dim + i] = n[h * c.head_dim + i + c.head_dim / 2] = u(rng);
  LayerF64 scaled = original;
  fold_pre_rope_scaling(scaled, c, n);
  EXPECT_LT(max_abs_diff(layer_forward(original, c, x), layer_forward(scaled, c, x)), 1e-11);

  // Breaking the pairing (a different scale on i and i + d/2) changes the output: the test can fail.
  n[1] *= 3;
  LayerF64 broken = original;
  fold_pre_rope_scaling(broken, c, n);
  EXPECT_GT(max_abs_diff(layer_forward(original, c, x), layer_forward(broken, c, x)), 1e-6);
}

TEST(QuantTransforms, PreRopeFoldRepeatsOverTheGqaGroup) {
  const LlamaConfig c = tiny_config();  // 4 query heads, 2 KV heads: heads 0,1 -> kv 0; 2,3 -> kv 1
  std::mt19937 rng(41);
  const LayerF64 original = random_layer(c, rng, false);
  std::vector<double> n(static_cast<size_t>(c.kv_dim()));
  for (size_t i = 0; i < n.size(); ++i) n[i] = 1.0 + static_cast<double>(i % 4);
  LayerF64 scaled = original;
  fold_pre_rope_scaling(scaled, c, n);
  const int d = c.head_dim;
  for (int hq = 0; hq < 4; ++hq)
    for (int i = 0; i < d; ++i)
      EXPECT_DOUBLE_EQ(scaled.wq.row(hq * d + i)[5], original.wq.row(hq * d + i)[5] / n[(hq / 2) * d + i]);
  for (int r = 0; r < c.kv_dim(); ++r) EXPECT_DOUBLE_EQ(scaled.wk.row(r)[3], original.wk.row(r)[3] * n[r]);
}

TEST(QuantTransforms, RopeScalingPicksTopPairsAndLeavesThemToPostRope) {
  KeyStatistics st;
  st.kv_heads = 1;
  st.head_dim = 8;
  st.post_rope_absmax = {1, 9, 2, 3, 4, 1, 8, 2};  // pair scores: 4, 9, 8, 3
  st.pair_norm_max = {2, 5, 4, 0.5};
  QuantRecipe r;
  r.kv_bits = 4;
  r.pre_rope = r.post_rope = true;
  r.pre_rope_alpha = 8;
  r.post_rope_beta = 4;
  r.post_rope_top_k = 2;
  const RopeScaling s = compute_rope_scaling(st, r);
  EXPECT_EQ(s.post_rope_channels, (std::vector<int32_t>{1, 2, 5, 6}));
  EXPECT_FLOAT_EQ(s.post_rope[1], 4.0f / 9);
  EXPECT_FLOAT_EQ(s.post_rope[5], 4.0f / 1);
  EXPECT_FLOAT_EQ(s.post_rope[2], 4.0f / 2);
  EXPECT_FLOAT_EQ(s.post_rope[6], 4.0f / 8);
  EXPECT_FLOAT_EQ(s.post_rope[0], 1.0f);
  // N = alpha / pair norm on the pairs S does not cover, 1 on those it does.
  const std::vector<double> expected_n = {4, 1, 1, 16, 4, 1, 1, 16};
  EXPECT_EQ(s.pre_rope, expected_n);

  r.post_rope = false;
  const RopeScaling pre_only = compute_rope_scaling(st, r);
  EXPECT_TRUE(pre_only.post_rope.empty());
  EXPECT_DOUBLE_EQ(pre_only.pre_rope[1], 8.0 / 5);

  r.post_rope = true;
  r.post_rope_top_k = 5;  // more pairs than head_dim / 2
  EXPECT_THROW(compute_rope_scaling(st, r), Error);
}

TEST(QuantTransforms, PostRopeScalingIsExactInFp64) {
  const LlamaConfig c = tiny_config();
  std::mt19937 rng(51);
  const LayerF64 layer = random_layer(c, rng, false);
  const auto x = random_tokens(c, 5, rng);
  std::vector<float> s(static_cast<size_t>(c.kv_dim()), 1.0f);
  s[2] = s[6] = 0.25f;  // one pair of KV head 0
  s[c.head_dim + 1] = s[c.head_dim + 5] = 3.0f;
  EXPECT_LT(max_abs_diff(layer_forward(layer, c, x), layer_forward(layer, c, x, s)), 1e-11);
}

}  // namespace
}  // namespace fireq
