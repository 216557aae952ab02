// The CPU reference of the INT4 x FP8 GEMM against an independent FP64 computation, its epilogues,
// its input checks, and the measurement behind the dequant choice (exact INT4->FP8 + per-group
// promotion vs the reference project's lookup table w = fp8(q * sigma)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "fireq/error.h"
#include "fireq/kernels/gemm_reference.h"
#include "fireq/numerics.h"

namespace fireq::gemm {
namespace {

std::vector<float> random_floats(std::mt19937& rng, size_t count, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

// y = x_fp8 * scale * s_inv . (q * sigma) in FP64: the ideal product of the quantized operands.
std::vector<double> fp64_product(const Fp8Activations& x, const Int4Weights& w, double s_inv) {
  std::vector<double> y(static_cast<size_t>(x.m) * w.n, 0.0);
  const int groups = w.k / w.group_size;
  for (int m = 0; m < x.m; ++m)
    for (int n = 0; n < w.n; ++n) {
      double sum = 0.0;
      for (int k = 0; k < w.k; ++k) {
        const double q = int4_at(w.packed.data() + static_cast<size_t>(n) * w.k / 2, k);
        const double sigma = fp8_e4m3_to_float(w.scales[static_cast<size_t>(n) * groups + k / w.group_size]);
        sum += fp8_e4m3_to_float(x.values[static_cast<size_t>(m) * w.k + k]) * q * sigma;
      }
      y[static_cast<size_t>(m) * w.n + n] = sum * x.scales[m] * s_inv;
    }
  return y;
}

double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(diff / norm);
}

struct Shape {
  int m, n, k, group;
};

class GemmReferenceShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(GemmReferenceShapes, MatchesFp64ProductOfQuantizedOperands) {
  const Shape s = GetParam();
  std::mt19937 rng(std::random_device{}());
  const auto w_float = random_floats(rng, static_cast<size_t>(s.n) * s.k, 0.02f);
  const auto x_float = random_floats(rng, static_cast<size_t>(s.m) * s.k, 1.0f);
  const Int4Weights w = quantize_int4_weights(w_float.data(), s.n, s.k, s.group);
  const Fp8Activations x = quantize_fp8_rows(x_float.data(), s.m, s.k);
  const float s_inv = 0.25f;
  const auto y = gemm_accumulate_reference(x, w, s_inv);
  const auto ideal = fp64_product(x, w, s_inv);
  // FP32 promotion of K/group partial sums: a few float ulps of the largest partial.
  EXPECT_LT(relative_error(y, ideal), 1e-6);
  // And the quantized product is close to the float product (INT4 + FP8 quantization error).
  double diff = 0.0, norm = 0.0;
  for (int m = 0; m < s.m; ++m)
    for (int n = 0; n < s.n; ++n) {
      double exact = 0.0;
      for (int k = 0; k < s.k; ++k)
        exact += static_cast<double>(x_float[static_cast<size_t>(m) * s.k + k]) * w_float[static_cast<size_t>(n) * s.k + k];
      const double e = y[static_cast<size_t>(m) * s.n + n] / s_inv - exact;
      diff += e * e;
      norm += exact * exact;
    }
  EXPECT_LT(std::sqrt(diff / norm), 0.25);  // INT4 alone gives 0.08-0.16 on Gaussian weights
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmReferenceShapes,
                         ::testing::Values(Shape{1, 64, 128, 128}, Shape{1, 48, 64, 64}, Shape{7, 96, 576, 64},
                                           Shape{13, 128, 256, 128}, Shape{3, 64, 576, 64}, Shape{33, 32, 128, 64}));

TEST(GemmReference, QuantizedWeightsFollowNumericsHeader) {
  std::mt19937 rng(std::random_device{}());
  const int n = 16, k = 256, group = 64;
  auto w_float = random_floats(rng, static_cast<size_t>(n) * k, 0.05f);
  w_float[5] = 1000.0f;  // clamped to 448 before the scale is taken
  const Int4Weights w = quantize_int4_weights(w_float.data(), n, k, group);
  for (int row = 0; row < n; ++row)
    for (int g = 0; g < k / group; ++g) {
      float absmax = 0.0f;
      for (int i = 0; i < group; ++i)
        absmax = std::max(absmax, std::min(448.0f, std::fabs(w_float[static_cast<size_t>(row) * k + g * group + i])));
      const uint8_t scale = w.scales[static_cast<size_t>(row) * (k / group) + g];
      EXPECT_EQ(scale, int4_group_scale_e4m3(absmax));
      const float sigma = fp8_e4m3_to_float(scale);
      for (int i = 0; i < group; ++i) {
        const float v = w_float[static_cast<size_t>(row) * k + g * group + i];
        const int q = int4_at(w.packed.data() + static_cast<size_t>(row) * k / 2, g * group + i);
        EXPECT_EQ(q, int4_quantize(std::clamp(v, -448.0f, 448.0f), sigma));
      }
    }
}

TEST(GemmReference, ActivationScalesAreBf16AndCodesSaturate) {
  std::mt19937 rng(std::random_device{}());
  const int m = 5, k = 64;
  auto x = random_floats(rng, static_cast<size_t>(m) * k, 3.0f);
  for (int i = 0; i < k; ++i) x[2 * k + i] = 0.0f;  // an all-zero token keeps scale 1
  const Fp8Activations a = quantize_fp8_rows(x.data(), m, k);
  EXPECT_EQ(a.scales[2], 1.0f);
  for (int row = 0; row < m; ++row) {
    EXPECT_EQ(a.scales[row], round_to_bf16(a.scales[row]));
    for (int i = 0; i < k; ++i) EXPECT_LE(std::fabs(fp8_e4m3_to_float(a.values[static_cast<size_t>(row) * k + i])), 448.0f);
  }
}

TEST(GemmReference, EpiloguesFollowTheirDefinitions) {
  std::mt19937 rng(std::random_device{}());
  const int m = 3, n = 64, k = 128;
  const auto w_float = random_floats(rng, static_cast<size_t>(n) * k, 0.02f);
  const auto x_float = random_floats(rng, static_cast<size_t>(m) * k, 1.0f);
  const Int4Weights w = quantize_int4_weights(w_float.data(), n, k, 64);
  const Fp8Activations x = quantize_fp8_rows(x_float.data(), m, k);
  const auto y = gemm_accumulate_reference(x, w, 1.0f);
  std::vector<uint16_t> residual(static_cast<size_t>(m) * n);
  for (auto& r : residual) r = bf16_from_float(std::normal_distribution<float>(0.0f, 1.0f)(rng));

  const auto plain = gemm_reference(x, w, 1.0f, Epilogue::kBf16);
  const auto added = gemm_reference(x, w, 1.0f, Epilogue::kResidualAdd, residual.data());
  const auto swiglu = gemm_reference(x, w, 1.0f, Epilogue::kSwiGlu);
  ASSERT_EQ(swiglu.size(), static_cast<size_t>(m) * n / 2);
  for (int row = 0; row < m; ++row)
    for (int col = 0; col < n; ++col) {
      const size_t i = static_cast<size_t>(row) * n + col;
      EXPECT_EQ(plain[i], bf16_from_float(y[i]));
      EXPECT_EQ(added[i], bf16_from_float(y[i] + bf16_to_float(residual[i])));
      if (col < n / 2) {
        const double gate = y[i], up = y[i + n / 2];
        const double want = gate / (1.0 + std::exp(-gate)) * up;
        EXPECT_NEAR(bf16_to_float(swiglu[static_cast<size_t>(row) * n / 2 + col]), want, std::fabs(want) * 1e-2 + 1e-6);
      }
    }
  EXPECT_THROW(gemm_reference(x, w, 1.0f, Epilogue::kResidualAdd), Error);
}

TEST(GemmReference, Fp8OutputQuantizesTheBf16Rows) {
  std::mt19937 rng(std::random_device{}());
  const int m = 4, n = 96;
  std::vector<uint16_t> rows(static_cast<size_t>(m) * n);
  for (auto& r : rows) r = bf16_from_float(std::normal_distribution<float>(0.0f, 2.0f)(rng));
  const Fp8Activations q = quantize_bf16_rows_reference(rows.data(), m, n);
  for (int row = 0; row < m; ++row) {
    float absmax = 0.0f;
    for (int i = 0; i < n; ++i) absmax = std::max(absmax, std::fabs(bf16_to_float(rows[static_cast<size_t>(row) * n + i])));
    EXPECT_EQ(q.scales[row], fp8_token_scale(absmax));
    for (int i = 0; i < n; ++i) {
      const float v = bf16_to_float(rows[static_cast<size_t>(row) * n + i]);
      EXPECT_NEAR(fp8_e4m3_to_float(q.values[static_cast<size_t>(row) * n + i]) * q.scales[row], v,
                  std::fabs(v) * 0.0625f + q.scales[row] / 512.0f);
    }
  }
}

TEST(GemmReference, RmsNormFp8MatchesFp64Normalisation) {
  std::mt19937 rng(std::random_device{}());
  const int m = 6, k = 576;
  std::vector<uint16_t> x(static_cast<size_t>(m) * k), gamma(k);
  for (auto& v : x) v = bf16_from_float(std::normal_distribution<float>(0.0f, 4.0f)(rng));
  for (auto& v : gamma) v = bf16_from_float(std::uniform_real_distribution<float>(0.5f, 1.5f)(rng));
  const float eps = 1e-5f;
  const Fp8Activations q = rmsnorm_fp8_reference(x.data(), gamma.data(), m, k, eps);
  for (int row = 0; row < m; ++row) {
    double ss = 0.0;
    for (int i = 0; i < k; ++i) ss += std::pow(bf16_to_float(x[static_cast<size_t>(row) * k + i]), 2);
    const double inv = 1.0 / std::sqrt(ss / k + eps);
    for (int i = 0; i < k; ++i) {
      const double want = bf16_to_float(x[static_cast<size_t>(row) * k + i]) * inv * bf16_to_float(gamma[i]);
      const double got = fp8_e4m3_to_float(q.values[static_cast<size_t>(row) * k + i]) * q.scales[row];
      EXPECT_NEAR(got, want, std::fabs(want) * 0.07 + q.scales[row] / 256.0);
    }
  }
}

TEST(GemmReference, RejectsMismatchedShapes) {
  std::mt19937 rng(std::random_device{}());
  const auto w_float = random_floats(rng, 64 * 128, 0.02f);
  const auto x_float = random_floats(rng, 2 * 64, 1.0f);
  const Int4Weights w = quantize_int4_weights(w_float.data(), 64, 128, 128);
  const Fp8Activations x = quantize_fp8_rows(x_float.data(), 2, 64);
  EXPECT_THROW(gemm_accumulate_reference(x, w, 1.0f), Error);
  EXPECT_THROW(quantize_int4_weights(w_float.data(), 64, 96, 64), Error);
  EXPECT_THROW(quantize_int4_weights(w_float.data(), 64, 128, 32), Error);
}

// The decision behind the kernel's numerics: error of each dequant scheme against the FP64 product
// of the quantized operands, on Llama-like weights (Gaussian plus a few outliers per group).
TEST(GemmReference, ExactPromotionIsMoreAccurateThanLookupTable) {
  std::mt19937 rng(std::random_device{}());
  for (const int group : {64, 128}) {
    const int m = 8, n = 128, k = 1024;
    auto w_float = random_floats(rng, static_cast<size_t>(n) * k, 0.02f);
    for (size_t i = 0; i < w_float.size(); i += 97) w_float[i] *= 6.0f;
    const auto x_float = random_floats(rng, static_cast<size_t>(m) * k, 1.0f);
    const Int4Weights w = quantize_int4_weights(w_float.data(), n, k, group);
    const Fp8Activations x = quantize_fp8_rows(x_float.data(), m, k);
    const auto ideal = fp64_product(x, w, 1.0);
    const auto exact = gemm_accumulate_reference(x, w, 1.0f);
    // Lookup table: w = fp8(q * sigma), one FP32 accumulator over K.
    std::vector<float> lut(static_cast<size_t>(m) * n);
    for (int row = 0; row < m; ++row)
      for (int col = 0; col < n; ++col) {
        float acc = 0.0f;
        for (int kk = 0; kk < k; ++kk) {
          const float sigma = fp8_e4m3_to_float(w.scales[static_cast<size_t>(col) * (k / group) + kk / group]);
          const float wq = round_to_fp8_e4m3(int4_at(w.packed.data() + static_cast<size_t>(col) * k / 2, kk) * sigma);
          acc = std::fmaf(fp8_e4m3_to_float(x.values[static_cast<size_t>(row) * k + kk]), wq, acc);
        }
        lut[static_cast<size_t>(row) * n + col] = acc * x.scales[row];
      }
    const double exact_error = relative_error(exact, ideal);
    const double lut_error = relative_error(lut, ideal);
    std::printf("group %d: relative error vs FP64 of the quantized operands: exact promotion %.2e, LUT %.2e\n",
                group, exact_error, lut_error);
    EXPECT_LT(exact_error, 1e-6);
    EXPECT_GT(lut_error, 10 * exact_error);
  }
}

}  // namespace
}  // namespace fireq::gemm
