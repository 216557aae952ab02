// The BF16 path's memory-bound ops: embedding gather, RMSNorm, RoPE + KV cache write, SwiGLU, and
// random weights. Each follows the CPU reference engine's arithmetic (src/runtime/cpu/engine.cpp)
// operation by operation (explicit _rn intrinsics where the compiler would otherwise fuse a
// multiply-add), so the remaining CPU/GPU difference is the BF16 rounding of GEMM inputs and KV.
#include <cuda_bf16.h>

#include "fireq/cuda_check.h"
#include "fireq/numerics.h"
#include "kernels.h"

namespace fireq::cuda_runtime {
namespace {

constexpr int kThreads = 256;
// One block per token: wide blocks keep many loads in flight for the few-token steps of decode.
constexpr int kRowThreads = 1024;

__device__ __forceinline__ uint16_t to_bf16(float x) { return bf16_from_float(x); }
__device__ __forceinline__ float from_bf16(uint16_t x) { return bf16_to_float(x); }

__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(uint16_t bf16) { return from_bf16(bf16); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(uint16_t* p, float x) { *p = to_bf16(x); }  // exact: x came from BF16

// The residual stream is FP32 on the BF16 path, BF16 on the FireQ path (its GEMM epilogues).
template <typename Residual>
__global__ void embed_kernel(const uint16_t* table, const int32_t* ids, int hidden, Residual* residual) {
  const int token = blockIdx.x;
  const uint16_t* row = table + size_t(ids[token]) * hidden;
  Residual* out = residual + size_t(token) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) store(out + i, from_bf16(row[i]));
}

template <typename Residual>
__global__ void rms_norm_kernel(const Residual* x, const int32_t* rows, int width, const float* gamma,
                                double eps, uint16_t* out) {
  const int r = blockIdx.x;
  const Residual* row = x + size_t(rows ? rows[r] : r) * width;
  double sum_squares = 0;
#pragma unroll 4
  for (int i = threadIdx.x; i < width; i += blockDim.x) sum_squares += double(as_float(row[i])) * as_float(row[i]);
  __shared__ double partial[kRowThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum_squares;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kRowThreads / 32; ++w) total += partial[w];
  const float inv_rms = float(1.0 / sqrt(total / width + eps));
  uint16_t* y = out + size_t(r) * width;
#pragma unroll 4
  for (int i = threadIdx.x; i < width; i += blockDim.x)
    y[i] = to_bf16(__fmul_rn(gamma[i], __fmul_rn(as_float(row[i]), inv_rms)));
}

// One block per token: rotate q heads into q_out, k heads into the cache, copy v into the cache.
__global__ void rope_cache_kernel(RopeCacheArgs args, StepMetadata step) {
  const int token = blockIdx.x;
  const KvPool& pool = args.pool;
  const int d = pool.head_dim, half = d / 2;
  const int kv_heads = pool.kv_heads, q_heads = args.q_heads;
  const int width = (q_heads + 2 * kv_heads) * d;
  const float* row = args.qkv + size_t(token) * width;
  const int position = step.positions[token];
  const float* cs = args.cos_sin + size_t(position) * half * 2;
  const int page = step.block_table[step.token_chunk[token] * step.table_stride + position / pool.page_size];
  const int slot = position % pool.page_size;
  auto value = [&](int column) { return args.bias ? __fadd_rn(row[column], args.bias[column]) : row[column]; };

#pragma unroll 2
  for (int pair = threadIdx.x; pair < (q_heads + kv_heads) * half; pair += blockDim.x) {
    const int head = pair / half, i = pair % half;  // heads q_heads.. are k heads
    const float a = value(head * d + i), b = value(head * d + i + half);
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const float lo = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    const float hi = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    if (head < q_heads) {
      float* q = args.q_out + (size_t(token) * q_heads + head) * d;
      q[i] = lo;
      q[i + half] = hi;
    } else {
      uint16_t* k = pool.base + pool.offset(args.layer, page, 0, head - q_heads, slot);
      k[i] = to_bf16(lo);
      k[i + half] = to_bf16(hi);
    }
  }
  const int v_start = (q_heads + kv_heads) * d;
  for (int c = threadIdx.x; c < kv_heads * d; c += blockDim.x) {
    uint16_t* v = pool.base + pool.offset(args.layer, page, 1, c / d, slot);
    v[c % d] = to_bf16(value(v_start + c));
  }
}

__global__ void swiglu_kernel(const float* gate_up, int inter, uint16_t* out) {
  const int token = blockIdx.x;  // x: up to 2^31 - 1 tokens (y would stop at 65535)
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const float* row = gate_up + size_t(token) * 2 * inter;
  const float g = row[i];
  const float silu = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
  out[size_t(token) * inter + i] = to_bf16(__fmul_rn(silu, row[inter + i]));
}

__device__ __forceinline__ float hash_uniform(uint64_t seed, size_t index) {  // in [-1, 1)
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return float(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_bf16_kernel(uint16_t* out, size_t count, uint64_t seed, float offset, float amplitude) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x)
    out[i] = to_bf16(offset + amplitude * hash_uniform(seed, i));
}

__global__ void fill_f32_kernel(float* out, size_t count, uint64_t seed, float offset, float amplitude) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x)
    out[i] = offset + amplitude * hash_uniform(seed, i);
}

// Bytes of two INT4 codes uniform in [-7, 7] (symmetric: no mean for the residual stream to drift on).
__global__ void fill_int4_kernel(uint8_t* out, size_t bytes, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < bytes; i += size_t(gridDim.x) * blockDim.x) {
    const int lo = min(7, int(floorf((hash_uniform(seed, 2 * i) + 1.0f) * 7.5f)) - 7);
    const int hi = min(7, int(floorf((hash_uniform(seed, 2 * i + 1) + 1.0f) * 7.5f)) - 7);
    out[i] = uint8_t((lo & 0xF) | ((hi & 0xF) << 4));
  }
}

__global__ void pad_rows_kernel(const uint8_t* in, int k, int k_pad, uint8_t* out) {
  const int row = blockIdx.x;
  for (int i = threadIdx.x; i < k_pad; i += blockDim.x)
    out[size_t(row) * k_pad + i] = i < k ? in[size_t(row) * k + i] : uint8_t{0};
}

int fill_grid(size_t count) { return int(std::min<size_t>((count + kThreads - 1) / kThreads, 132 * 32)); }

}  // namespace

void embed_tokens(const uint16_t* table, const int32_t* ids, int tokens, int hidden, float* residual,
                  cudaStream_t stream) {
  embed_kernel<<<tokens, kThreads, 0, stream>>>(table, ids, hidden, residual);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void embed_tokens(const uint16_t* table, const int32_t* ids, int tokens, int hidden, uint16_t* residual,
                  cudaStream_t stream) {
  embed_kernel<<<tokens, kThreads, 0, stream>>>(table, ids, hidden, residual);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void rms_norm_to_bf16(const float* x, const int32_t* rows, int count, int width, const float* gamma,
                      double eps, uint16_t* out, cudaStream_t stream) {
  rms_norm_kernel<<<count, kRowThreads, 0, stream>>>(x, rows, width, gamma, eps, out);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void rms_norm_to_bf16(const uint16_t* x, const int32_t* rows, int count, int width, const float* gamma,
                      double eps, uint16_t* out, cudaStream_t stream) {
  rms_norm_kernel<<<count, kRowThreads, 0, stream>>>(x, rows, width, gamma, eps, out);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void pad_rows(const uint8_t* in, int rows, int k, int k_pad, uint8_t* out, cudaStream_t stream) {
  pad_rows_kernel<<<rows, kThreads, 0, stream>>>(in, k, k_pad, out);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void fill_random_int4(uint8_t* packed, size_t bytes, uint64_t seed, cudaStream_t stream) {
  fill_int4_kernel<<<fill_grid(bytes), kThreads, 0, stream>>>(packed, bytes, seed);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void rope_and_write_cache(const RopeCacheArgs& args, const StepMetadata& step, cudaStream_t stream) {
  rope_cache_kernel<<<step.tokens, kRowThreads, 0, stream>>>(args, step);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void swiglu_to_bf16(const float* gate_up, int tokens, int inter, uint16_t* out, cudaStream_t stream) {
  const dim3 grid(tokens, (inter + kThreads - 1) / kThreads);
  swiglu_kernel<<<grid, kThreads, 0, stream>>>(gate_up, inter, out);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void fill_random_bf16(uint16_t* out, size_t count, uint64_t seed, float offset, float amplitude,
                      cudaStream_t stream) {
  fill_bf16_kernel<<<fill_grid(count), kThreads, 0, stream>>>(out, count, seed, offset, amplitude);
  FIREQ_CUDA_CHECK_LAUNCH();
}

void fill_random_f32(float* out, size_t count, uint64_t seed, float offset, float amplitude,
                     cudaStream_t stream) {
  fill_f32_kernel<<<fill_grid(count), kThreads, 0, stream>>>(out, count, seed, offset, amplitude);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::cuda_runtime
