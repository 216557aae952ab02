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
// absmax and takes a ticket; whoever takes a token's last ticket quantizes the whole token (all
// heads) from the BF16 output. Null `codes`: BF16 output only.
struct Fp8Output {
  uint8_t* codes;      // [tokens][q_heads][head_dim] e4m3
  float* scale;        // [tokens]
  uint32_t* absmax;    // [tokens] float bits (values >= 0 order like their bits), zeroed by the launcher
  uint32_t* tickets;   // [tokens] rows registered so far, zeroed by the launcher
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

// One warp quantizes token `token` (all heads) from the BF16 output: numerics.h's per-token rule.
__device__ __forceinline__ void quantize_token_fp8(const KernelParams& p, int64_t token, int lane) {
  __threadfence();  // acquire: the other rows' stores, ordered before their tickets
  const int row = p.q_heads * p.layout.head_dim;  // a multiple of 8: 16-byte pieces
  const float scale = fp8_token_scale(__uint_as_float(__ldcg(p.fp8.absmax + token)));
  const uint16_t* src = p.out + token * row;
  uint8_t* dst = p.fp8.codes + token * row;
  for (int i = 8 * lane; i < row; i += 8 * 32) {
    const uint4 x = __ldcg(reinterpret_cast<const uint4*>(src + i));
    const uint32_t w[4] = {x.x, x.y, x.z, x.w};
    uint32_t code[2];
    #pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint32_t lo = e4m3x2(bf16_bits_to_float(w[2 * j] & 0xFFFFu) / scale, bf16_bits_to_float(w[2 * j] >> 16) / scale);
      const uint32_t hi =
          e4m3x2(bf16_bits_to_float(w[2 * j + 1] & 0xFFFFu) / scale, bf16_bits_to_float(w[2 * j + 1] >> 16) / scale);
      code[j] = lo | (hi << 16);
    }
    *reinterpret_cast<uint2*>(dst + i) = make_uint2(code[0], code[1]);
  }
  if (lane == 0) p.fp8.scale[token] = scale;
}

// Registers one written BF16 output row of `token` with the largest |value| it holds; true for the
// caller that registers the token's last head (it must then have its warp call quantize_token_fp8).
// The row's stores must be fenced (__threadfence) by every thread that made them, before this.
__device__ __forceinline__ bool register_fp8_row(const KernelParams& p, int64_t token, float row_absmax) {
  atomicMax(p.fp8.absmax + token, __float_as_uint(row_absmax));
  __threadfence();  // the absmax before the ticket
  return atomicAdd(p.fp8.tickets + token, 1u) == uint32_t(p.q_heads) - 1;
}

// The warp-level epilogue for kernels whose rows are spread over quads of an mma layout (thread
// (g, t) holds rows g and g + 8 of its warp's 16, 4 threads per row): `token[rh]` < 0 for rows not
// written. Every lane of the warp calls it, after its own stores.
__device__ __forceinline__ void fp8_epilogue_quads(const KernelParams& p, const int64_t (&token)[2],
                                                   const float (&absmax)[2], int lane) {
  __threadfence();
  __syncwarp();
  bool last[2] = {false, false};
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float m = absmax[rh];
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, 2));
    if (lane % 4 == 0 && token[rh] >= 0) last[rh] = register_fp8_row(p, token[rh], m);
  }
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    for (uint32_t done = __ballot_sync(0xFFFFFFFFu, last[rh]); done != 0; done &= done - 1) {
      const int64_t t = __shfl_sync(0xFFFFFFFFu, token[rh], __ffs(done) - 1);
      quantize_token_fp8(p, t, lane);
    }
  }
}

// The same for kernels that write a row with a whole warp (each lane some channels).
__device__ __forceinline__ void fp8_epilogue_warp_row(const KernelParams& p, int64_t token, float lane_absmax,
                                                      int lane) {
  __threadfence();
  float m = lane_absmax;
  #pragma unroll
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  bool last = false;
  if (lane == 0) last = register_fp8_row(p, token, m);
  if (__shfl_sync(0xFFFFFFFFu, last, 0)) quantize_token_fp8(p, token, lane);
}

}  // namespace fireq::attention::detail
