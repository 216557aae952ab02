// CPU reference of the INT4 x FP8 GEMM and its epilogues: the exact numerics the Hopper kernel
// implements (docs/kernels/GEMM.md states the order of every rounding and the GPU error bound).
//
//   acc[m][n]  = sum over groups g, in increasing g:  acc = fmaf(sigma[n][g], partial_g, acc)
//                partial_g = float( exact sum over k in group g of x_fp8[m][k] * q[n][k] )
//   y[m][n]    = acc * (a_scale[m] * s_inv)
//   epilogue:  bf16(y) | bf16(silu(y_gate) * y_up) | bf16(y + residual) | FP8 rows of the bf16 out
//
// The INT4 values are promoted to FP8 exactly (|q| <= 8 is representable) and the group scale is
// applied to the FP32 partial sum of its group, so no second rounding of q * sigma happens.
#pragma once

#include <cstdint>
#include <vector>

namespace fireq::gemm {

// Canonical checkpoint layout (numerics.h): packed [n][k/2] bytes, low nibble = even k;
// scales [n][k/group_size] FP8 e4m3 codes.
struct Int4Weights {
  int n = 0;
  int k = 0;
  int group_size = 0;
  std::vector<uint8_t> packed;
  std::vector<uint8_t> scales;
};

// FP8 e4m3 activations [m][k] with one BF16-valued scale per row (token).
struct Fp8Activations {
  int m = 0;
  int k = 0;
  std::vector<uint8_t> values;
  std::vector<float> scales;
};

enum class Epilogue {
  kBf16,         // out[m][n] = bf16(y)
  kSwiGlu,       // weights are gate|up concatenated ([2I][K]); out[m][i] = bf16(silu(gate) * up)
  kResidualAdd,  // out[m][n] = bf16(y + residual[m][n])
};

const char* epilogue_name(Epilogue epilogue);

// Symmetric INT4 group quantization of float rows [n][k] (numerics.h's scale and rounding).
Int4Weights quantize_int4_weights(const float* w, int n, int k, int group_size);

// Per-token FP8 quantization of float rows [m][k].
Fp8Activations quantize_fp8_rows(const float* x, int m, int k);

// RMSNorm then per-token FP8: v = x * (1 / sqrt(mean(x^2) + eps)) * gamma, then quantize_fp8_rows.
// x and gamma hold BF16 bit patterns. The sum of squares is taken in double and rounded to float.
Fp8Activations rmsnorm_fp8_reference(const uint16_t* x, const uint16_t* gamma, int m, int k,
                                     float eps);

// The FP32 value y[m][n] before the epilogue (the accumulation order of the header comment).
std::vector<float> gemm_accumulate_reference(const Fp8Activations& x, const Int4Weights& w,
                                             float s_inv);

// The whole GEMM with its epilogue; BF16 bit patterns out, [m][n] (or [m][n/2] for SwiGLU).
// residual: BF16 [m][n], only for kResidualAdd.
std::vector<uint16_t> gemm_reference(const Fp8Activations& x, const Int4Weights& w, float s_inv,
                                     Epilogue epilogue, const uint16_t* residual = nullptr);

// The epilogue alone, applied to y from gemm_accumulate_reference (n columns of y).
std::vector<uint16_t> apply_epilogue_reference(const std::vector<float>& y, int m, int n,
                                               Epilogue epilogue, const uint16_t* residual);

// Optional FP8 output for the next GEMM: per-token FP8 of the BF16 epilogue output.
Fp8Activations quantize_bf16_rows_reference(const uint16_t* rows, int m, int n);

// SiLU as the kernel computes it: g / (1 + exp(-g)) in float.
float silu_reference(float g);

}  // namespace fireq::gemm
