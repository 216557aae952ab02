// RMSNorm -> per-token FP8 (the GEMM's input), and plain per-token FP8 of BF16 rows (the GEMM's
// optional FP8 output). One CTA per row; the row is read three times (sum of squares, absmax,
// quantize), from L1/L2 after the first.
#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"

namespace fireq::gemm {
namespace {

constexpr int kThreads = 256;

template <typename Op>
__device__ float block_reduce(float v, Op op, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// The normalised value, rounded exactly as the CPU reference (no fused multiply-add).
__device__ float normed(const uint16_t* row, const uint16_t* gamma, int i, float inv_rms) {
  const float x = bf16_to_float(row[i]);
  return gamma ? __fmul_rn(__fmul_rn(x, inv_rms), bf16_to_float(gamma[i])) : x;
}

__global__ void rmsnorm_fp8_kernel(const uint16_t* __restrict__ x, const uint16_t* __restrict__ gamma, int k, float eps,
                                   uint8_t* __restrict__ out, float* __restrict__ out_scales) {
  __shared__ float scratch[kThreads / 32];
  const uint16_t* row = x + static_cast<size_t>(blockIdx.x) * k;
  float inv_rms = 1.0f;
  if (gamma) {
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < k; i += kThreads) {
      const float v = bf16_to_float(row[i]);
      sum_squares = fmaf(v, v, sum_squares);
    }
    sum_squares = block_reduce(sum_squares, [](float a, float b) { return a + b; }, scratch);
    inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(k) + eps);
  }
  float absmax = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) absmax = fmaxf(absmax, fabsf(normed(row, gamma, i, inv_rms)));
  absmax = block_reduce(absmax, [](float a, float b) { return fmaxf(a, b); }, scratch);
  const float scale = fp8_token_scale(absmax);
  for (int i = threadIdx.x; i < k; i += kThreads)
    out[static_cast<size_t>(blockIdx.x) * k + i] = fp8_quantize_activation(normed(row, gamma, i, inv_rms), scale);
  if (threadIdx.x == 0) out_scales[blockIdx.x] = scale;
}

}  // namespace

void rmsnorm_quantize_fp8(const uint16_t* x, const uint16_t* gamma, int m, int k, float eps, uint8_t* out,
                          float* out_scales, cudaStream_t stream) {
  if (x == nullptr || out == nullptr || out_scales == nullptr) fail("rmsnorm_quantize_fp8: null input or output");
  if (m <= 0 || k <= 0) fail("rmsnorm_quantize_fp8: bad shape [", m, "][", k, "]");
  rmsnorm_fp8_kernel<<<m, kThreads, 0, stream>>>(x, gamma, k, eps, out, out_scales);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::gemm
