// What the attention kernels share: the launch parameters they all read, small device helpers, and
// the optional FP8 output epilogue (PagedAttentionArgs::out_fp8, docs/kernels/ATTENTION.md §2).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fireq/cuda_check.h"
#include "fireq/kernels/attention.h"
#include "fireq/numerics.h"

namespace fireq::attention::detail {

constexpr float kLog2e = 1.4426950408889634f;

// The FP8 copy of the output: each (token, head) row of BF16 output, once written, raises the token's
// absmax; the last writer of a group of tokens (a prefill query tile: its last head's CTA; a decode
// token: its last row) takes the group's last ticket and quantizes it, all heads, from the BF16
// output. Null `codes`: BF16 output only.
struct Fp8Output {
  uint8_t* codes;      // [tokens][q_heads][head_dim] e4m3
  float* scale;        // [tokens]
  uint32_t* absmax;    // [tokens] float bits (values >= 0 order like their bits), zeroed by the launcher
  uint32_t* tickets;   // [tokens] writers done so far (per group, at its first token), zeroed by the launcher
};

// Launch parameters common to the kernels (device pointers, from PagedAttentionArgs).
struct KernelParams {
  const uint8_t* q;
  const uint16_t* q_scale;
  const int32_t* query_start;
  const int32_t* block_table;
  const int32_t* seq_lens;
  const uint8_t* k;
  const uint8_t* v;
  const uint16_t* k_scale;
  const uint16_t* v_scale;
  PagedKvLayout layout;
  int max_pages_per_seq;
  int page_shift;      // log2(page_size)
  int q_heads, group;
  float score_factor;  // softmax_scale * log2(e)
  uint16_t* out;
  Fp8Output fp8;
};

// Host: the common parameters of `args` (shapes already checked); clears the FP8 epilogue's
// workspace on `stream` when the FP8 output is asked for.
inline KernelParams make_kernel_params(const PagedAttentionArgs& args, cudaStream_t stream) {
  const PagedKvLayout& layout = args.cache.layout;
  KernelParams p{};
  p.q = args.q;
  p.q_scale = args.q_scale;
  p.query_start = args.query_start;
  p.block_table = args.sequences.block_table;
  p.seq_lens = args.sequences.seq_lens;
  p.k = args.cache.k;
  p.v = args.cache.v;
  p.k_scale = args.cache.k_scale;
  p.v_scale = args.cache.v_scale;
  p.layout = layout;
  p.max_pages_per_seq = args.sequences.max_pages_per_seq;
  p.page_shift = __builtin_ctz(static_cast<unsigned>(layout.page_size));  // a power of two (check_layout)
  p.q_heads = args.q_heads;
  p.group = args.q_heads / layout.kv_heads;
  p.score_factor = args.softmax_scale * kLog2e;
  p.out = args.out;
  if (args.out_fp8) {
    p.fp8 = Fp8Output{args.out_fp8, args.out_fp8_scale, args.out_fp8_workspace,
                      args.out_fp8_workspace + args.total_queries};
    FIREQ_CUDA_CHECK(cudaMemsetAsync(args.out_fp8_workspace, 0,
                                     fp8_output_workspace_words(args) * sizeof(uint32_t), stream));
  }
  return p;
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) { return __uint_as_float(uint32_t{bits} << 16); }

// Two floats -> two e4m3 bytes (RNE, saturating: numerics.h's fp8_e4m3_from_float), `low` first.
__device__ __forceinline__ uint32_t e4m3x2(float low, float high) {
  uint16_t packed;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(packed) : "f"(high), "f"(low));
  return packed;
}

// Asynchronous global -> shared copy of 16, 8 or 4 bytes; `valid` false writes zeros (reads nothing).
// kPrefetch256: DRAM fetches the whole 256-byte block (neighbouring pieces come in with the first).
template <int kBytes, bool kPrefetch256 = false>
__device__ __forceinline__ void copy_async(void* smem, const void* gmem, bool valid) {
  static_assert(kBytes == 16 || kBytes == 8 || kBytes == 4, "16-, 8- or 4-byte pieces");
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? kBytes : 0;
  if constexpr (kBytes == 16 && kPrefetch256) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_bytes)
                 : "memory");
  } else if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
  } else if constexpr (kPrefetch256) {
    asm volatile("cp.async.ca.shared.global.L2::256B [%0], [%1], %2, %3;" ::"r"(dst), "l"(gmem), "n"(kBytes),
                 "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(dst), "l"(gmem), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// mma.sync kernels (split-KV decode, FA2 prefill): FP16 operands, FP32 accumulators.
__device__ __forceinline__ void mma_f16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Nibbles j and j + 4 of a word of 8 two's-complement INT4 values, as exact FP16 (low, high): one
// LOP3 builds 1024 + (n ^ 8) = 1032 + n, one HSUB2 takes 1032 away.
__device__ __forceinline__ uint32_t int4_pair_to_f16x2(uint32_t word, int j) {
  const uint32_t biased = ((word >> (4 * j)) & 0x000F000Fu) ^ 0x64086408u;
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&biased), __half2half2(__ushort_as_half(0x6408)));
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t pack_f16x2(float low, float high) {
  const __half2 h = __floats2half2_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// ---------------------------------------------------------------------------------------------
// FP8 output epilogue.

// x / scale rounded to nearest, as IEEE division would give it, for normal quotients: the quotient
// from the correctly rounded reciprocal, then one Markstein correction (the residual by fma is exact).
// Quotients below the normal range come out within an ulp, far below e4m3's smallest subnormal.
__device__ __forceinline__ float divide_rn(float x, float scale, float inverse) {
  const float q0 = x * inverse;
  return fmaf(fmaf(-q0, scale, x), inverse, q0);
}

// Quantizes 16-byte pieces [begin, end) (stride `step`) of the BF16 output rows (`row` values each) of
// tokens [first_token, ...) into the FP8 output: piece i is token first_token + i / (row / 8). Loads
// come in groups of kBatch per thread so that they are in flight together.
template <int kBatch>
__device__ __forceinline__ void quantize_pieces_fp8(const uint16_t* out, Fp8Output fp8, int row, int64_t first_token,
                                                 int begin, int end, int step) {
  const int pieces_per_token = row / 8;  // row is a multiple of 8: whole 16-byte pieces
  const uint4* src = reinterpret_cast<const uint4*>(out + first_token * row);
  uint2* dst = reinterpret_cast<uint2*>(fp8.codes + first_token * row);
  for (int base = begin; base < end; base += kBatch * step) {
    uint4 x[kBatch];
    uint32_t absmax[kBatch];
    #pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = min(base + u * step, end - 1);  // past the end: a valid piece, not stored
      x[u] = __ldcg(src + i);
      absmax[u] = __ldcg(fp8.absmax + first_token + i / pieces_per_token);
    }
    #pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = base + u * step;
      if (i >= end) continue;
      const int64_t token = first_token + i / pieces_per_token;
      const float scale = fp8_token_scale(__uint_as_float(absmax[u]));
      const float inverse = __frcp_rn(scale);
      const uint32_t w[4] = {x[u].x, x[u].y, x[u].z, x[u].w};
      uint32_t code[2];
      #pragma unroll
      for (int j = 0; j < 2; ++j) {
        auto q = [&](uint32_t bits) { return divide_rn(bf16_bits_to_float(bits), scale, inverse); };
        code[j] = e4m3x2(q(w[2 * j] & 0xFFFFu), q(w[2 * j] >> 16)) |
                  (e4m3x2(q(w[2 * j + 1] & 0xFFFFu), q(w[2 * j + 1] >> 16)) << 16);
      }
      dst[i] = make_uint2(code[0], code[1]);
      if (i % pieces_per_token == 0) fp8.scale[token] = scale;
    }
  }
}

// Registers one written BF16 output row of `token` with the largest |value| it holds.
__device__ __forceinline__ void register_fp8_row(const KernelParams& p, int64_t token, float row_absmax) {
  atomicMax(p.fp8.absmax + token, __float_as_uint(row_absmax));
}

// The CTA-level epilogue of the prefill kernels: each CTA holds `tokens` tokens x one head; the CTAs
// of a query tile (one per head) take a ticket when done (counted at the tile's first token), and the
// last one quantizes the whole tile, all `threads` threads together. `sync` is a barrier over exactly
// those threads; kBatch: loads in flight per thread. Every one of them calls this after its stores,
// with its rows of the quad layout (thread (g, t) of a warp holds rows g and g + 8, 4 threads per
// row; token < 0: no row) and their |max|.
template <int kBatch, typename Sync>
__device__ __forceinline__ void fp8_epilogue_tile(const uint16_t* out, Fp8Output fp8, int q_heads, int row,
                                               int64_t token0, int64_t token1, float absmax0, float absmax1,
                                               int64_t first_token, int tokens, int thread, int threads,
                                               int* smem_flag, Sync sync) {
  const int64_t token[2] = {token0, token1};
  const float absmax[2] = {absmax0, absmax1};
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float m = absmax[rh];
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, 2));
    if (thread % 4 == 0 && token[rh] >= 0) atomicMax(fp8.absmax + token[rh], __float_as_uint(m));
  }
  __threadfence();  // this thread's BF16 stores and absmax before the tile's ticket
  sync();
  if (thread == 0) {
    const bool last = atomicAdd(fp8.tickets + first_token, 1u) == uint32_t(q_heads) - 1;
    if (last) __threadfence();  // acquire: the other CTAs' stores, ordered before their tickets
    *smem_flag = last;
  }
  sync();
  if (*smem_flag) {
    __threadfence();
    quantize_pieces_fp8<kBatch>(out, fp8, row, first_token, thread, tokens * (row / 8), threads);
  }
}

// The warp-level epilogue of the split-KV kernels, which write a row with a whole warp (each lane some
// channels): tickets per token (q_heads rows each); the warp that writes a token's last row
// quantizes the token.
__device__ __forceinline__ void fp8_epilogue_warp_row(const KernelParams& p, int64_t token, float lane_absmax,
                                                      int lane) {
  float m = lane_absmax;
  #pragma unroll
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  __threadfence();  // every lane's stores before the ticket
  __syncwarp();
  bool last = false;
  if (lane == 0) {
    register_fp8_row(p, token, m);
    __threadfence();  // the absmax before the ticket
    last = atomicAdd(p.fp8.tickets + token, 1u) == uint32_t(p.q_heads) - 1;
  }
  if (__shfl_sync(0xFFFFFFFFu, last, 0)) {
    __threadfence();
    const int row = p.q_heads * p.layout.head_dim;
    quantize_pieces_fp8<4>(p.out, p.fp8, row, token, lane, row / 8, 32);
  }
}

}  // namespace fireq::attention::detail
