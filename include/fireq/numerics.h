// FireQ numerics: the one definition of every rounding the project uses, callable from host and
// device code. CPU references, the quantizer and the CUDA kernels all go through these functions
// (kernels may use the hardware cvt instructions instead, which produce the same bits; tests check
// that), so a result computed on the CPU is bit-identical to the GPU's.
//
//  - FP8 e4m3 / e5m2 (OCP "FN" variants as in CUDA): round-to-nearest-even with saturation to the
//    largest finite value, exactly CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...). NaN -> 0x7F.
//  - BF16: round-to-nearest-even, NaN -> 0x7FFF, exactly __float2bfloat16_rn.
//  - INT4: symmetric, no zero point, values in [-8, 7], FP8 e4m3 group scales along K.
//    Canonical packing (checkpoint and CPU reference): row-major [N][K/2] bytes; byte j of a row
//    holds k = 2j in its low nibble and k = 2j+1 in its high nibble, two's complement.
//  - Per-token FP8 activations: scale = bf16(absmax / 448) (1 for an all-zero row),
//    q = fp8_e4m3(x / scale) with saturation (so |q| <= 448 even after the scale's rounding).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FIREQ_HD __host__ __device__ __forceinline__
#else
#define FIREQ_HD inline
#endif

namespace fireq {

// ---------------------------------------------------------------------------------------------
// Bit casts
FIREQ_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FIREQ_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Round a non-negative float holding at most a few integer bits to the nearest integer, ties to
// even. Independent of the floating-point environment's rounding mode.
FIREQ_HD uint32_t round_half_even_small(float v) {
  const uint32_t whole = static_cast<uint32_t>(v);  // truncation == floor for v >= 0
  const float frac = v - static_cast<float>(whole); // exact: v has few integer bits
  if (frac > 0.5f || (frac == 0.5f && (whole & 1u))) return whole + 1;
  return whole;
}

// ---------------------------------------------------------------------------------------------
// FP8 e4m3: bias 7, no infinities, 0x7F/0xFF NaN, largest finite 448 (0x7E), smallest
// subnormal 2^-9.
constexpr float kFp8E4M3Max = 448.0f;
constexpr float kFp8E4M3MinSubnormal = 1.0f / 512.0f;

FIREQ_HD uint8_t fp8_e4m3_from_float(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return 0x7F;  // NaN (sign dropped, as CUDA does)
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const float a = bits_float(abs_bits);
  // 464 = 448 + half an ulp: above it rounding would reach the NaN code, so saturate (inf too).
  if (a > 464.0f) return sign | 0x7E;
  if (a < 0.015625f) {  // below 2^-6: subnormal grid of step 2^-9 (code 8 is the first normal)
    return sign | static_cast<uint8_t>(round_half_even_small(a * 512.0f));
  }
  const uint32_t exponent = ((abs_bits >> 23) & 0xFFu) - 127u + 7u;  // 1..15
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t code = (exponent << 3) | (mantissa >> 20);
  const uint32_t rest = mantissa & 0xFFFFFu;
  if (rest > 0x80000u || (rest == 0x80000u && (code & 1u))) ++code;  // carry may bump exponent
  return sign | static_cast<uint8_t>(code);
}

FIREQ_HD float fp8_e4m3_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t exponent = (code >> 3) & 0xFu;
  const uint32_t mantissa = code & 0x7u;
  if (exponent == 0xF && mantissa == 0x7) return bits_float(0x7FC00000u | sign);
  if (exponent == 0) {  // subnormal: mantissa * 2^-9, exact in float
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * kFp8E4M3MinSubnormal));
  }
  return bits_float(sign | ((exponent - 7u + 127u) << 23) | (mantissa << 20));
}

// FP8 e5m2: bias 15, 0x7C inf, largest finite 57344 (0x7B), smallest subnormal 2^-16.
constexpr float kFp8E5M2Max = 57344.0f;

FIREQ_HD uint8_t fp8_e5m2_from_float(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return 0x7F;
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const float a = bits_float(abs_bits);
  if (a >= 61440.0f) return sign | 0x7B;  // 57344 + half an ulp ties to the odd side: saturate
  if (a < 6.103515625e-05f) {             // below 2^-14: subnormal grid of step 2^-16
    return sign | static_cast<uint8_t>(round_half_even_small(a * 65536.0f));
  }
  const uint32_t exponent = ((abs_bits >> 23) & 0xFFu) - 127u + 15u;
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t code = (exponent << 2) | (mantissa >> 21);
  const uint32_t rest = mantissa & 0x1FFFFFu;
  if (rest > 0x100000u || (rest == 0x100000u && (code & 1u))) ++code;
  return sign | static_cast<uint8_t>(code);
}

FIREQ_HD float fp8_e5m2_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t exponent = (code >> 2) & 0x1Fu;
  const uint32_t mantissa = code & 0x3u;
  if (exponent == 0x1F) return bits_float(sign | (mantissa ? 0x7FC00000u : 0x7F800000u));
  if (exponent == 0) {
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * (1.0f / 65536.0f)));
  }
  return bits_float(sign | ((exponent - 15u + 127u) << 23) | (mantissa << 21));
}

// Round a float through e4m3 and back: the value a kernel sees after an FP8 cast.
FIREQ_HD float round_to_fp8_e4m3(float x) { return fp8_e4m3_to_float(fp8_e4m3_from_float(x)); }

// ---------------------------------------------------------------------------------------------
// BF16
FIREQ_HD uint16_t bf16_from_float(float x) {
  const uint32_t bits = float_bits(x);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
  const uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

FIREQ_HD float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

FIREQ_HD float round_to_bf16(float x) { return bf16_to_float(bf16_from_float(x)); }

// FP16 (IEEE binary16) decode, for reading F16 checkpoints and GGUF block scales.
FIREQ_HD float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * (1.0f / 16777216.0f)));
  }
  return bits_float(sign | ((exponent - 15u + 127u) << 23) | (mantissa << 13));
}

// FP16 encode: round-to-nearest-even, overflow to infinity, NaN -> 0x7FFF, exactly
// __float2half_rn (checked in tests/kernels_attention). Attention's P operand (split-KV kernel).
FIREQ_HD uint16_t f16_from_float(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if (abs_bits > 0x7F800000u) return 0x7FFF;
  if (abs_bits >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 (max + half an ulp): infinity
  if (abs_bits < 0x38800000u) {                       // below 2^-14: subnormal grid of step 2^-24
    return sign | static_cast<uint16_t>(round_half_even_small(bits_float(abs_bits) * 16777216.0f));
  }
  const uint32_t exponent = ((abs_bits >> 23) & 0xFFu) - 127u + 15u;
  const uint32_t mantissa = abs_bits & 0x7FFFFFu;
  uint32_t code = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (code & 1u))) ++code;
  return sign | static_cast<uint16_t>(code);
}

FIREQ_HD float round_to_f16(float x) { return f16_to_float(f16_from_float(x)); }

// ---------------------------------------------------------------------------------------------
// INT4 symmetric group quantization with FP8 e4m3 group scales.
constexpr int kInt4Min = -8;
constexpr int kInt4Max = 7;

// The group scale: sigma = fp8_e4m3(absmax / 7), at least the smallest e4m3 subnormal so that a
// zero group still has a valid (non-zero) scale. Callers clamp weights to <= 448 beforehand.
FIREQ_HD uint8_t int4_group_scale_e4m3(float group_absmax) {
  const uint8_t code = fp8_e4m3_from_float(group_absmax / 7.0f);
  return fp8_e4m3_to_float(code) < kFp8E4M3MinSubnormal ? uint8_t{0x01} : code;
}

// q = clamp(round_half_even(w / sigma), -8, 7), sigma already rounded to FP8.
FIREQ_HD int int4_quantize(float w, float sigma) {
  const float v = w / sigma;
  const float a = v < 0.0f ? -v : v;
  const int magnitude = a >= 16.0f ? 16 : static_cast<int>(round_half_even_small(a));
  const int q = v < 0.0f ? -magnitude : magnitude;
  return q < kInt4Min ? kInt4Min : (q > kInt4Max ? kInt4Max : q);
}

FIREQ_HD uint8_t int4_pack(int low, int high) {
  return static_cast<uint8_t>((low & 0xF) | ((high & 0xF) << 4));
}

FIREQ_HD int int4_unpack_low(uint8_t byte) { return static_cast<int>(static_cast<int8_t>(byte << 4)) >> 4; }
FIREQ_HD int int4_unpack_high(uint8_t byte) { return static_cast<int>(static_cast<int8_t>(byte)) >> 4; }

// Element k of a canonically packed row.
FIREQ_HD int int4_at(const uint8_t* packed_row, int k) {
  const uint8_t byte = packed_row[k >> 1];
  return (k & 1) ? int4_unpack_high(byte) : int4_unpack_low(byte);
}

// ---------------------------------------------------------------------------------------------
// Per-token FP8 activation quantization.
FIREQ_HD float fp8_token_scale(float row_absmax) {
  return row_absmax > 0.0f ? round_to_bf16(row_absmax / kFp8E4M3Max) : 1.0f;
}

FIREQ_HD uint8_t fp8_quantize_activation(float x, float token_scale) {
  return fp8_e4m3_from_float(x / token_scale);
}

}  // namespace fireq
