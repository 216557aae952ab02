// Fused RoPE + FireQ post-RoPE scaling + Q -> FP8 + K/V -> INT4 + paged cache write, from the QKV
// GEMM's BF16 output. A CTA = one token x 4 heads (q, k or v), one warp per head, so that every
// warp's load -> reduce -> store chain runs in parallel; a lane holds RoPE pairs (i, i + d/2). Bit-identical to quantize_qkv_reference: same table, explicit fma, IEEE divisions.
#include <cuda_runtime.h>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/attention.h"

namespace fireq::attention {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ float warp_max(float x) {
  #pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, off));
  return x;
}

__device__ __forceinline__ float load_bf16(const uint16_t* p) { return bf16_to_float(p[0]); }

// A head's values as this lane holds them: pairs m = 0.. of channels (lane + 32m, lane + 32m + d/2).
template <int kHeadDim>
struct LaneHead {
  static constexpr int kPairs = kHeadDim / 64;
  float lo[kPairs], hi[kPairs];

  __device__ void load(const uint16_t* row, int lane) {
    #pragma unroll
    for (int m = 0; m < kPairs; ++m) {
      lo[m] = load_bf16(row + lane + 32 * m);
      hi[m] = load_bf16(row + lane + 32 * m + kHeadDim / 2);
    }
  }
  __device__ void rotate(const float* cos_sin_row, int lane) {
    #pragma unroll
    for (int m = 0; m < kPairs; ++m) {
      const float2 cs = reinterpret_cast<const float2*>(cos_sin_row)[lane + 32 * m];
      const float l = lo[m], h = hi[m];
      lo[m] = fmaf(l, cs.x, -(h * cs.y));
      hi[m] = fmaf(h, cs.x, l * cs.y);
    }
  }
  __device__ float absmax() const {
    float a = 0.0f;
    #pragma unroll
    for (int m = 0; m < kPairs; ++m) a = fmaxf(a, fmaxf(fabsf(lo[m]), fabsf(hi[m])));
    return warp_max(a);
  }
  template <typename Fn>
  __device__ void for_each(int lane, Fn&& fn) {  // fn(channel, value&)
    #pragma unroll
    for (int m = 0; m < kPairs; ++m) {
      fn(lane + 32 * m, lo[m]);
      fn(lane + 32 * m + kHeadDim / 2, hi[m]);
    }
  }
};

// Whether token `other` is `seq`'s token at `position` (the V nibble partner of a slot pair).
__device__ __forceinline__ bool is_token_at(const QkvQuantizeArgs& a, int other, int seq, int position) {
  return other >= 0 && other < a.tokens && a.seq_index[other] == seq && a.positions[other] == position;
}

template <int kHeadDim>
__global__ void __launch_bounds__(kWarps * 32) quantize_qkv_rope_kernel(const QkvQuantizeArgs a) {
  const int token = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const PagedKvLayout& layout = a.cache.layout;
  const int kv_heads = layout.kv_heads, group = a.q_heads / kv_heads;
  const int64_t width = int64_t(a.q_heads + 2 * kv_heads) * kHeadDim;
  const uint16_t* row = a.qkv + token * width;
  const int pos = a.positions[token], seq = a.seq_index[token];
  const float* cos_sin = a.rope_cos_sin + int64_t(pos) * kHeadDim;  // d/2 pairs of (cos, sin)
  const int page = a.sequences.block_table[int64_t(seq) * a.sequences.max_pages_per_seq + pos / layout.page_size];
  const int slot = pos % layout.page_size;

  const int job = blockIdx.y * kWarps + warp;
  if (job >= a.q_heads + 2 * kv_heads) return;
  LaneHead<kHeadDim> x;
  x.load(row + int64_t(job) * kHeadDim, lane);
  if (job < a.q_heads) {  // query head: rotate, divide by S, FP8 per (token, head)
    x.rotate(cos_sin, lane);
    const float* s = a.post_rope_k_scale ? a.post_rope_k_scale + (job / group) * kHeadDim : nullptr;
    if (s) x.for_each(lane, [&](int c, float& v) { v /= s[c]; });
    const float scale = fp8_token_scale(x.absmax());
    uint8_t* out = a.q_fp8 + (int64_t(token) * a.q_heads + job) * kHeadDim;
    x.for_each(lane, [&](int c, float& v) { out[c] = fp8_quantize_activation(v, scale); });
    if (lane == 0) a.q_scale[int64_t(token) * a.q_heads + job] = bf16_from_float(scale);
  } else if (job < a.q_heads + kv_heads) {  // key head: rotate, multiply by S, INT4 token-major
    const int h = job - a.q_heads;
    x.rotate(cos_sin, lane);
    if (a.post_rope_k_scale) {
      const float* s = a.post_rope_k_scale + h * kHeadDim;
      x.for_each(lane, [&](int c, float& v) { v *= s[c]; });
    }
    const float scale = kv_int4_scale_bf16(x.absmax());
    uint8_t* k_row = a.cache.k + layout.k_row_offset(page, h, slot);
    // Channels 2j and 2j+1 share byte j: even lanes pack their odd neighbour's value.
    x.for_each(lane, [&](int c, float& v) {
      const int q = int4_quantize(v, scale);
      const int neighbour = __shfl_down_sync(0xFFFFFFFFu, q, 1);
      if ((c & 1) == 0) k_row[c / 2] = int4_pack(q, neighbour);
    });
    if (lane == 0) a.cache.k_scale[layout.scale_offset(page, h, slot)] = bf16_from_float(scale);
  } else {  // value head: INT4 channel-major; slots 2j and 2j+1 share a byte per channel
    const int h = job - a.q_heads - kv_heads;
    const float scale = kv_int4_scale_bf16(x.absmax());
    if (lane == 0) a.cache.v_scale[layout.scale_offset(page, h, slot)] = bf16_from_float(scale);
    const bool odd = slot & 1;
    const int partner = odd ? token - 1 : token + 1;
    const bool partner_here = is_token_at(a, partner, seq, odd ? pos - 1 : pos + 1);
    if (odd && partner_here) return;  // the even slot's CTA writes the byte
    LaneHead<kHeadDim> y;              // the partner's values, quantized the same way
    float partner_scale = 1.0f;
    if (partner_here) {
      y.load(a.qkv + partner * width + int64_t(job) * kHeadDim, lane);
      partner_scale = kv_int4_scale_bf16(y.absmax());
    }
    #pragma unroll
    for (int m = 0; m < LaneHead<kHeadDim>::kPairs; ++m)
      #pragma unroll
      for (int high = 0; high < 2; ++high) {
        const int c = lane + 32 * m + high * (kHeadDim / 2);
        const int mine = int4_quantize(high ? x.hi[m] : x.lo[m], scale);
        uint8_t* byte = a.cache.v + layout.v_channel_offset(page, h, c) + slot / 2;
        if (partner_here) {
          *byte = int4_pack(mine, int4_quantize(high ? y.hi[m] : y.lo[m], partner_scale));
        } else {
          *byte = odd ? int4_pack(int4_unpack_low(*byte), mine) : int4_pack(mine, int4_unpack_high(*byte));
        }
      }
  }
}

}  // namespace

void quantize_qkv(const QkvQuantizeArgs& args, void* stream) {
  check_shapes(args);
  if (args.tokens == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(args.tokens, (args.q_heads + 2 * args.cache.layout.kv_heads + kWarps - 1) / kWarps);
  if (args.cache.layout.head_dim == 128) {
    quantize_qkv_rope_kernel<128><<<grid, kWarps * 32, 0, s>>>(args);
  } else {
    quantize_qkv_rope_kernel<64><<<grid, kWarps * 32, 0, s>>>(args);
  }
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::attention
