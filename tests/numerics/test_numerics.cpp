// FP8/BF16/INT4 numerics against CUDA's own host-callable conversions (cuda_fp8.h, cuda_bf16.h).
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "fireq/numerics.h"

namespace {

uint8_t cuda_e4m3(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); }
uint8_t cuda_e5m2(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2); }
uint16_t cuda_bf16(float x) {
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  uint16_t u;
  std::memcpy(&u, &b, sizeof u);
  return u;
}
float cuda_e4m3_decode(uint8_t c) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(c, __NV_E4M3);
  return __half2float(__half(h));
}
float cuda_e5m2_decode(uint8_t c) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(c, __NV_E5M2);
  return __half2float(__half(h));
}

bool same_float(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return fireq::float_bits(a) == fireq::float_bits(b);
}

// Edge values: zeros, both formats' subnormal and normal boundaries, exact halfway points
// between neighbouring codes (and one float ulp either side), saturation limits, inf, NaN.
std::vector<float> edge_values() {
  std::vector<float> v = {0.0f, -0.0f, 448.0f, -448.0f, 464.0f, 463.99f, 480.0f, 57344.0f,
                          61440.0f, 61439.996f, 65536.0f, 1e30f, -1e30f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(), 1.0f / 1024, 1.0f / 512,
                          3.0f / 1024, 1.0f / 64, 1.0f / 65536, 1.0f / 131072};
  for (int code = 0; code < 256; ++code) {
    for (const auto decode : {fireq::fp8_e4m3_to_float, fireq::fp8_e5m2_to_float}) {
      const float lo = decode(static_cast<uint8_t>(code));
      const float hi = decode(static_cast<uint8_t>(code + 1));
      if (!std::isfinite(lo) || !std::isfinite(hi) || ((code + 1) & 0x7F) == 0) continue;
      const float mid = 0.5f * (lo + hi);
      for (const float x : {lo, mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY)}) {
        v.push_back(x);
        v.push_back(-x);
      }
    }
  }
  return v;
}

TEST(Fp8, AllCodesRoundTrip) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const float e4 = fireq::fp8_e4m3_to_float(code);
    EXPECT_TRUE(same_float(e4, cuda_e4m3_decode(code))) << "e4m3 code " << c;
    if (!std::isnan(e4)) {
      EXPECT_EQ(fireq::fp8_e4m3_from_float(e4), code) << "e4m3 code " << c;
    }
    const float e5 = fireq::fp8_e5m2_to_float(code);
    EXPECT_TRUE(same_float(e5, cuda_e5m2_decode(code))) << "e5m2 code " << c;
    if (std::isfinite(e5)) {
      EXPECT_EQ(fireq::fp8_e5m2_from_float(e5), code) << "e5m2 code " << c;
    }
  }
}

TEST(Fp8, EdgeValuesMatchCuda) {
  for (const float x : edge_values()) {
    ASSERT_EQ(fireq::fp8_e4m3_from_float(x), cuda_e4m3(x)) << "e4m3 of " << x;
    ASSERT_EQ(fireq::fp8_e5m2_from_float(x), cuda_e5m2(x)) << "e5m2 of " << x;
    ASSERT_EQ(fireq::bf16_from_float(x), cuda_bf16(x)) << "bf16 of " << x;
  }
}

// Millions of random floats: uniform bit patterns (every exponent, NaNs included) plus values
// concentrated in each format's range.
TEST(Fp8, RandomFloatsMatchCuda) {
  std::mt19937 rng(20261125);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_real_distribution<float> exponent(-20.0f, 17.0f);
  for (int i = 0; i < 4'000'000; ++i) {
    const float x = (i & 1) ? fireq::bits_float(any_bits(rng))
                            : std::ldexp((any_bits(rng) & 1) ? 1.0f : -1.0f, 0) *
                                  std::exp2(exponent(rng));
    ASSERT_EQ(fireq::fp8_e4m3_from_float(x), cuda_e4m3(x)) << "e4m3 of " << x;
    ASSERT_EQ(fireq::fp8_e5m2_from_float(x), cuda_e5m2(x)) << "e5m2 of " << x;
    ASSERT_EQ(fireq::bf16_from_float(x), cuda_bf16(x)) << "bf16 of " << x;
  }
}

TEST(Int4, PackUnpackAllPairs) {
  for (int lo = fireq::kInt4Min; lo <= fireq::kInt4Max; ++lo)
    for (int hi = fireq::kInt4Min; hi <= fireq::kInt4Max; ++hi) {
      const uint8_t b = fireq::int4_pack(lo, hi);
      EXPECT_EQ(fireq::int4_unpack_low(b), lo);
      EXPECT_EQ(fireq::int4_unpack_high(b), hi);
    }
}

TEST(Int4, GroupQuantizationIsSymmetricAndBounded) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (int trial = 0; trial < 1000; ++trial) {
    float w[128], absmax = 0.0f;
    for (float& x : w) absmax = std::fmax(absmax, std::fabs(x = normal(rng)));
    const float sigma = fireq::fp8_e4m3_to_float(fireq::int4_group_scale_e4m3(absmax));
    ASSERT_GE(sigma, fireq::kFp8E4M3MinSubnormal);
    for (const float x : w) {
      const int q = fireq::int4_quantize(x, sigma);
      ASSERT_GE(q, fireq::kInt4Min);
      ASSERT_LE(q, fireq::kInt4Max);
      // Inside the grid the error is at most half a step; only clamping at -8/7 can exceed it.
      if (std::fabs(x / sigma) <= 7.0f) {
        ASSERT_LE(std::fabs(q * sigma - x), 0.5f * sigma * 1.0001f);
      }
    }
  }
  EXPECT_EQ(fireq::int4_group_scale_e4m3(0.0f), 0x01);  // zero group keeps a valid scale
  EXPECT_EQ(fireq::int4_quantize(2.5f, 1.0f), 2);       // ties to even
  EXPECT_EQ(fireq::int4_quantize(-3.5f, 1.0f), -4);
  EXPECT_EQ(fireq::int4_quantize(100.0f, 1.0f), 7);
  EXPECT_EQ(fireq::int4_quantize(-100.0f, 1.0f), -8);
}

TEST(Fp8, ActivationQuantizationNeverExceedsRange) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int row = 0; row < 10000; ++row) {
    float x[64], absmax = 0.0f;
    for (float& v : x) absmax = std::fmax(absmax, std::fabs(v = u(rng) * std::exp2(u(rng) * 4)));
    const float s = fireq::fp8_token_scale(absmax);
    for (const float v : x) {
      const float q = fireq::fp8_e4m3_to_float(fireq::fp8_quantize_activation(v, s));
      ASSERT_LE(std::fabs(q), fireq::kFp8E4M3Max);
      ASSERT_LE(std::fabs(q * s - v), std::fabs(v) * 0.0625f + s * fireq::kFp8E4M3MinSubnormal);
    }
  }
  EXPECT_EQ(fireq::fp8_token_scale(0.0f), 1.0f);
}

}  // namespace
