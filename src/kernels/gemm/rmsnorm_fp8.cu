// RMSNorm -> per-token FP8 (the GEMM's input), and plain per-token FP8 of BF16 rows (the GEMM's
// optional FP8 output). One CTA per row. Rows of up to 8192 values that are whole 16-byte vectors
// (the hidden sizes) are read once into registers: one load round trip plus two block reductions.
// Longer rows (intermediate sizes) take a three-pass kernel that re-reads the row from L1/L2: held
// in registers they cost so many registers per thread that prefill's many rows ran at one CTA per
// SM and took twice as long (measured on H100, bench/e2e/NOTES-fireq.md).
#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"

namespace fireq::gemm {
namespace {

constexpr int kThreads = 256;
constexpr int kVectorElems = 8;            // BF16 values per 16-byte load
constexpr int kVectorsPerThread = 4;          // rows up to 256 * 8 * 4 = 8192 values
constexpr int kMaxRegisterRow = kThreads * kVectorElems * kVectorsPerThread;

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

__device__ void unpack_bf16x8(const uint4& packed, float (&v)[kVectorElems]) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    v[2 * w] = __uint_as_float(words[w] << 16);
    v[2 * w + 1] = __uint_as_float(words[w] & 0xFFFF0000u);
  }
}

// The register-resident kernel: k a multiple of 8, at most kMaxRegisterRow. Vector j of thread t is
// the row's vector t + j * kThreads; vectors past the row end are zero and change neither the sum of
// squares nor the absmax.
__global__ void __launch_bounds__(kThreads, 4) rmsnorm_fp8_registers_kernel(const uint16_t* __restrict__ x,
                                                                         const uint16_t* __restrict__ gamma, int k,
                                                                         float eps, uint8_t* __restrict__ out,
                                                                         float* __restrict__ out_scales) {
  __shared__ float scratch[kThreads / 32];
  const int vectors = k / kVectorElems;
  const uint4* row = reinterpret_cast<const uint4*>(x + static_cast<size_t>(blockIdx.x) * k);
  uint4 packed[kVectorsPerThread];
#pragma unroll
  for (int j = 0; j < kVectorsPerThread; ++j) {
    const int v = threadIdx.x + j * kThreads;
    packed[j] = v < vectors ? __ldg(row + v) : make_uint4(0, 0, 0, 0);
  }
  float inv_rms = 1.0f;
  if (gamma) {
    float sum_squares = 0.0f;
#pragma unroll
    for (int j = 0; j < kVectorsPerThread; ++j) {
      float v[kVectorElems];
      unpack_bf16x8(packed[j], v);
#pragma unroll
      for (int e = 0; e < kVectorElems; ++e) sum_squares = fmaf(v[e], v[e], sum_squares);
    }
    sum_squares = block_reduce(sum_squares, [](float a, float b) { return a + b; }, scratch);
    inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(k) + eps);
  }
  // gamma is re-read per pass rather than held: it is shared by every row and stays in L1.
  const uint4* gamma_vectors = reinterpret_cast<const uint4*>(gamma);
  auto normed_vector = [&](int j, float (&v)[kVectorElems]) {
    unpack_bf16x8(packed[j], v);
    const int at = threadIdx.x + j * kThreads;
    if (gamma == nullptr || at >= vectors) return;
    float g[kVectorElems];
    unpack_bf16x8(__ldg(gamma_vectors + at), g);
#pragma unroll
    for (int e = 0; e < kVectorElems; ++e) v[e] = __fmul_rn(__fmul_rn(v[e], inv_rms), g[e]);
  };
  float absmax = 0.0f;
#pragma unroll
  for (int j = 0; j < kVectorsPerThread; ++j) {
    float v[kVectorElems];
    normed_vector(j, v);
#pragma unroll
    for (int e = 0; e < kVectorElems; ++e) absmax = fmaxf(absmax, fabsf(v[e]));
  }
  absmax = block_reduce(absmax, [](float a, float b) { return fmaxf(a, b); }, scratch);
  const float scale = fp8_token_scale(absmax);
  uint2* out_row = reinterpret_cast<uint2*>(out + static_cast<size_t>(blockIdx.x) * k);
#pragma unroll
  for (int j = 0; j < kVectorsPerThread; ++j) {
    const int at = threadIdx.x + j * kThreads;
    if (at >= vectors) break;
    float v[kVectorElems];
    normed_vector(j, v);
    uint32_t bytes[2] = {0, 0};
#pragma unroll
    for (int e = 0; e < kVectorElems; ++e)
      bytes[e / 4] |= static_cast<uint32_t>(fp8_quantize_activation(v[e], scale)) << (8 * (e % 4));
    out_row[at] = make_uint2(bytes[0], bytes[1]);
  }
  if (threadIdx.x == 0) out_scales[blockIdx.x] = scale;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void rmsnorm_quantize_fp8(const uint16_t* x, const uint16_t* gamma, int m, int k, float eps, uint8_t* out,
                          float* out_scales, cudaStream_t stream) {
  if (x == nullptr || out == nullptr || out_scales == nullptr) fail("rmsnorm_quantize_fp8: null input or output");
  if (m <= 0 || k <= 0) fail("rmsnorm_quantize_fp8: bad shape [", m, "][", k, "]");
  const bool registers_fit = k % kVectorElems == 0 && k <= kMaxRegisterRow && aligned(x, 16) &&
                             (gamma == nullptr || aligned(gamma, 16)) && aligned(out, 8);
  if (registers_fit)
    rmsnorm_fp8_registers_kernel<<<m, kThreads, 0, stream>>>(x, gamma, k, eps, out, out_scales);
  else
    rmsnorm_fp8_kernel<<<m, kThreads, 0, stream>>>(x, gamma, k, eps, out, out_scales);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::gemm
