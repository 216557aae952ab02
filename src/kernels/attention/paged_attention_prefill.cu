// Causal prefill attention of FP8 queries over a paged INT4 KV cache (chunked prefill: the queries
// are the last q_len tokens of each sequence), FlashAttention-2 style on mma.sync: the first, correct
// prefill kernel. The FlashAttention-3 structure (TMA producer, ping-pong wgmma consumers, FP8 P) is
// the next step; this one keeps the split-KV kernel's numerics (PRounding::fp16).
//
// CTA = 64 query tokens of one query head (4 warps x 16 rows); the CTA streams the head's KV through a
// 2-stage cp.async pipeline of 64-token INT4 tiles (K rows [token][d/2] and V^T rows [d][tokens/2],
// exactly as they sit in a page), converts each tile once to FP16 in shared memory (exact), and every
// warp reads its operands with ldmatrix:
//   S = Q K^T   (A = Q in registers, B = K rows)
//   O += P V    (A = P straight from S's accumulators, B = V^T rows)
// The INT4 -> FP16 conversion (one LOP3 + HSUB2 per two values) emits the 8 values of a word in the
// order 0,4,1,5,2,6,3,7; rather than undo that, K rows are stored so that shared-memory key row x is
// cache token 8(x/8) + interleave(x%8), matching the V^T columns, and Q's channels are interleaved
// the same way in its fragments.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "attention_common.cuh"
#include "fireq/kernels/attention.h"

namespace fireq::attention {
namespace {

using detail::bf16_bits_to_float;
using detail::copy_async_commit;
using detail::copy_async_wait;
using detail::int4_pair_to_f16x2;
using detail::mma_f16_16816;
using detail::pack_f16x2;
using detail::copy_async;
using PrefillParams = detail::KernelParams;

constexpr int kTile = 64;         // query tokens per CTA and KV tokens per pipeline stage
constexpr int kWarps = 4;         // 16 query rows each

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Position j (0..7) of a converted word holds its nibble interleave(j) (pairs (0,4), (1,5), ...).
__host__ __device__ constexpr int interleave(int j) { return (j >> 1) + 4 * (j & 1); }
__host__ __device__ constexpr int deinterleave(int n) { return 2 * (n & 3) + (n >> 2); }
static_assert(interleave(deinterleave(5)) == 5 && interleave(deinterleave(2)) == 2, "inverse permutations");

// The 8 INT4 values of a word as FP16, in interleave order.
__device__ __forceinline__ uint4 int4_word_to_f16x8(uint32_t word) {
  return make_uint4(int4_pair_to_f16x2(word, 0), int4_pair_to_f16x2(word, 1), int4_pair_to_f16x2(word, 2),
                    int4_pair_to_f16x2(word, 3));
}

template <int kHeadDim>
struct RawStage {  // one 64-token tile as copied from the pages
  uint8_t k[kTile][kHeadDim / 2];
  uint8_t v[kHeadDim][kTile / 2];
  uint16_t k_scale[kTile], v_scale[kTile];
};

template <int kHeadDim>
struct HalfTile {  // the same tile in FP16; rows padded by 16 bytes so ldmatrix's 8 rows hit all banks
  __half k[kTile][kHeadDim + 8];  // row x: token 8(x/8) + interleave(x%8); channels interleaved per 8
  __half v[kHeadDim][kTile + 8];  // V^T: column x is token 8(x/8) + interleave(x%8)
};

template <int kHeadDim>
constexpr int kPrefillSmemBytes = static_cast<int>(2 * sizeof(RawStage<kHeadDim>) + sizeof(HalfTile<kHeadDim>));

template <int kHeadDim>
__global__ void __launch_bounds__(kWarps * 32) paged_attention_prefill_kernel(const PrefillParams p) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  constexpr int kSteps = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int kDTiles = kHeadDim / 8;  // n-tiles of O
  extern __shared__ __align__(16) uint8_t smem[];
  RawStage<kHeadDim>* stages = reinterpret_cast<RawStage<kHeadDim>*>(smem);
  HalfTile<kHeadDim>& half_tile = *reinterpret_cast<HalfTile<kHeadDim>*>(smem + 2 * sizeof(RawStage<kHeadDim>));

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q_tile = gridDim.x - 1 - blockIdx.x;  // longest causal ranges first
  const int head = blockIdx.y, b = blockIdx.z, h = head / p.group;
  const int q_begin = p.query_start[b], q_len = p.query_start[b + 1] - q_begin, seq_len = p.seq_lens[b];
  if (q_tile * kTile >= q_len) return;
  const int first_pos = seq_len - q_len;  // position of query 0
  const int kv_end = first_pos + min(q_len, (q_tile + 1) * kTile);

  // Q rows g and g + 8 of this warp as A fragments, channels interleaved like the FP16 K rows: A
  // column 2t + e of k-step s (8-column half h) is channel 16s + 8h + interleave(2t + e) = ... + t + 4e.
  const int row_query[2] = {q_tile * kTile + warp * 16 + g, q_tile * kTile + warp * 16 + g + 8};
  uint32_t q_frag[kSteps][4];
  float row_factor[2];
  int row_pos[2];
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const bool valid = row_query[rh] < q_len;
    const int64_t row = int64_t(q_begin + min(row_query[rh], q_len - 1)) * p.q_heads + head;
    const uint8_t* q_row = p.q + row * kHeadDim;
    row_factor[rh] = valid ? bf16_bits_to_float(p.q_scale[row]) * p.score_factor : 0.0f;
    row_pos[rh] = first_pos + row_query[rh];
    #pragma unroll
    for (int s = 0; s < kSteps; ++s)
      #pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int channel = 16 * s + 8 * half + t;
        const float lo = valid ? fp8_e4m3_to_float(q_row[channel]) : 0.0f;
        const float hi = valid ? fp8_e4m3_to_float(q_row[channel + 4]) : 0.0f;
        q_frag[s][rh + 2 * half] = pack_f16x2(lo, hi);  // a0/a1: rows g/g+8, columns 2t..; a2/a3: 8 + 2t..
      }
  }

  const int32_t* pages = p.block_table + int64_t(b) * p.max_pages_per_seq;
  const int page_mask = p.layout.page_size - 1;
  auto slot_of = [&](int pos) {  // (page * kv_heads + h) * page_size + slot of a cached position
    return (int64_t(pages[pos >> p.page_shift]) * p.layout.kv_heads + h) * p.layout.page_size + (pos & page_mask);
  };
  auto issue_tile = [&](int tile) {
    const int tile_start = tile * kTile;
    RawStage<kHeadDim>& st = stages[tile & 1];
    constexpr int kKPieces = kTile * kHeadDim / 32;  // 16-byte pieces of the tile's K rows
    for (int piece = threadIdx.x; piece < kKPieces; piece += kWarps * 32) {
      const int row = piece / (kHeadDim / 32), part = piece % (kHeadDim / 32), pos = tile_start + row;
      const bool valid = pos < kv_end;
      const uint8_t* src = valid ? p.k + slot_of(pos) * (kHeadDim / 2) + part * 16 : p.k;
      copy_async<16>(&st.k[row][part * 16], src, valid);
    }
    constexpr int kVPieces = kHeadDim * (kTile / 16);  // 8-byte pieces: 16 tokens of one channel
    for (int piece = threadIdx.x; piece < kVPieces; piece += kWarps * 32) {
      const int channel = piece / (kTile / 16), part = piece % (kTile / 16), pos = tile_start + 16 * part;
      const bool valid = pos < kv_end;
      const int64_t slot = valid ? slot_of(pos) : 0;
      // v_channel_offset(page, h, c) + slot / 2 = ((page * kv_heads + h) * d + c) * page_size / 2 + slot / 2
      const uint8_t* src = valid ? p.v + (((slot >> p.page_shift) * kHeadDim + channel) << p.page_shift) / 2 +
                                       (slot & page_mask) / 2
                                 : p.v;
      copy_async<8>(&st.v[channel][8 * part], src, valid);
    }
    if (threadIdx.x < 2 * kTile / 4) {  // 4 scales (8 bytes) per thread, K then V
      const int pos = tile_start + 4 * (threadIdx.x % (kTile / 4));
      const bool is_k = threadIdx.x < kTile / 4, valid = pos < kv_end;
      const uint16_t* scales = is_k ? p.k_scale : p.v_scale;
      copy_async<8>((is_k ? st.k_scale : st.v_scale) + 4 * (threadIdx.x % (kTile / 4)),
                    valid ? scales + slot_of(pos) : scales, valid);
    }
  };

  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  float o_acc[kDTiles][4] = {};
  const int tiles = (kv_end + kTile - 1) / kTile;
  issue_tile(0);
  copy_async_commit();
  for (int tile = 0; tile < tiles; ++tile) {
    if (tile + 1 < tiles) issue_tile(tile + 1);
    copy_async_commit();
    copy_async_wait<1>();
    __syncthreads();
    const RawStage<kHeadDim>& st = stages[tile & 1];
    const int tile_start = tile * kTile;
    // Below the diagonal of every row of the CTA and inside the sequence: no masks (most tiles).
    const bool interior = tile_start + kTile <= min(kv_end, first_pos + q_tile * kTile + 1);

    // The tile to FP16, once for all warps (exact: integers -8..7).
    for (int i = threadIdx.x; i < kTile * kHeadDim / 8; i += kWarps * 32) {
      const int key = i / (kHeadDim / 8), word = i % (kHeadDim / 8);
      const uint32_t w = *reinterpret_cast<const uint32_t*>(&st.k[key][4 * word]);
      *reinterpret_cast<uint4*>(&half_tile.k[(key & ~7) | deinterleave(key & 7)][8 * word]) = int4_word_to_f16x8(w);
    }
    for (int i = threadIdx.x; i < kHeadDim * kTile / 8; i += kWarps * 32) {
      const int channel = i / (kTile / 8), word = i % (kTile / 8);
      const uint32_t w = *reinterpret_cast<const uint32_t*>(&st.v[channel][4 * word]);
      *reinterpret_cast<uint4*>(&half_tile.v[channel][8 * word]) = int4_word_to_f16x8(w);
    }
    __syncthreads();

    // S = Q K^T, 8 n-tiles of 8 keys, scaled into the log2 domain and masked. Column 2t + c of n-tile
    // nt is K row nt*8 + 2t + c: token nt*8 + interleave(2t + c) = nt*8 + t + 4c.
    float s[8][4];
    #pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
      #pragma unroll
      for (int q = 0; q < kSteps / 2; ++q) {  // two k-steps per ldmatrix.x4
        uint32_t b[4];
        ldmatrix_x4(b, &half_tile.k[nt * 8 + (lane & 7)][32 * q + 8 * (lane >> 3)]);
        mma_f16_16816(s[nt], q_frag[2 * q], b[0], b[1]);
        mma_f16_16816(s[nt], q_frag[2 * q + 1], b[2], b[3]);
      }
      #pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int key = nt * 8 + interleave(2 * t + c), pos = tile_start + key;
        const float k_scale = bf16_bits_to_float(st.k_scale[key]);
        #pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          float& x = s[nt][2 * rh + c];
          x = (interior || (pos < kv_end && pos <= row_pos[rh])) ? (x * k_scale) * row_factor[rh] : -INFINITY;
        }
      }
    }

    // Online softmax per row; a row is shared by the 4 threads of a quad.
    float alpha[2], base[2];
    #pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float tile_max = -INFINITY;
      #pragma unroll
      for (int nt = 0; nt < 8; ++nt) tile_max = fmaxf(tile_max, fmaxf(s[nt][2 * rh], s[nt][2 * rh + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
      const float new_max = fmaxf(row_max[rh], tile_max);
      base[rh] = new_max == -INFINITY ? 0.0f : new_max;
      alpha[rh] = exp2f(row_max[rh] - base[rh]);
      row_max[rh] = new_max;
      row_sum[rh] *= alpha[rh];
    }
    #pragma unroll
    for (int i = 0; i < kDTiles; ++i)
      #pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[i][e] *= alpha[e >> 1];

    // P (times the token's V scale) to FP16: S's accumulators are already P's A fragments.
    uint32_t p_frag[4][4];
    #pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float pv[4];
      #pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int key = nt * 8 + interleave(2 * t + c);
        const float v_scale = interior || tile_start + key < kv_end ? bf16_bits_to_float(st.v_scale[key]) : 0.0f;
        #pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const float prob = exp2f(s[nt][2 * rh + c] - base[rh]);
          row_sum[rh] += prob;
          pv[2 * rh + c] = prob * v_scale;
        }
      }
      p_frag[nt >> 1][2 * (nt & 1)] = pack_f16x2(pv[0], pv[1]);      // row g
      p_frag[nt >> 1][2 * (nt & 1) + 1] = pack_f16x2(pv[2], pv[3]);  // row g + 8
    }

    // O += P V: B = V^T rows 8i .. 8i+7, two k-steps of 16 keys per ldmatrix.x4.
    #pragma unroll
    for (int i = 0; i < kDTiles; ++i)
      #pragma unroll
      for (int q = 0; q < 2; ++q) {
        uint32_t b[4];
        ldmatrix_x4(b, &half_tile.v[8 * i + (lane & 7)][32 * q + 8 * (lane >> 3)]);
        mma_f16_16816(o_acc[i], p_frag[2 * q], b[0], b[1]);
        mma_f16_16816(o_acc[i], p_frag[2 * q + 1], b[2], b[3]);
      }
    __syncthreads();  // the FP16 tile and the raw stage are overwritten next
  }

  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    row_sum[rh] += __shfl_xor_sync(0xFFFFFFFFu, row_sum[rh], 1);
    row_sum[rh] += __shfl_xor_sync(0xFFFFFFFFu, row_sum[rh], 2);
    if (row_query[rh] >= q_len) continue;
    uint16_t* out = p.out + (int64_t(q_begin + row_query[rh]) * p.q_heads + head) * kHeadDim;
    const float inv = 1.0f / row_sum[rh];
    #pragma unroll
    for (int i = 0; i < kDTiles; ++i) {
      const uint32_t pair = uint32_t(bf16_from_float(o_acc[i][2 * rh] * inv)) |
                            (uint32_t(bf16_from_float(o_acc[i][2 * rh + 1] * inv)) << 16);
      *reinterpret_cast<uint32_t*>(out + 8 * i + 2 * t) = pair;
    }
  }
}

template <int kHeadDim>
void launch_prefill(dim3 grid, const PrefillParams& p, cudaStream_t stream) {
  FIREQ_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_prefill_kernel<kHeadDim>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kPrefillSmemBytes<kHeadDim>));
  paged_attention_prefill_kernel<kHeadDim><<<grid, kWarps * 32, kPrefillSmemBytes<kHeadDim>, stream>>>(p);
}

}  // namespace

void paged_attention_prefill(const PagedAttentionArgs& args, void* stream) {
  check_shapes(args);
  // Its FP8 output epilogue raised this kernel's registers from 191 to 255 even when off: the option
  // lives in the kernels the engine runs.
  if (args.out_fp8)
    fail("paged_attention_prefill: out_fp8 is not supported here; paged_attention_prefill_fp8 and "
         "paged_attention_splitkv write the FP8 output");
  const PagedKvLayout& layout = args.cache.layout;
  const int q_tiles = (args.max_query_len + kTile - 1) / kTile;
  if (args.q_heads > 65535 || args.sequences.batch > 65535)
    fail("paged_attention_prefill: q_heads ", args.q_heads, " and batch ", args.sequences.batch, " must be <= 65535");
  const PrefillParams p = detail::make_kernel_params(args, static_cast<cudaStream_t>(stream));
  const dim3 grid(q_tiles, args.q_heads, args.sequences.batch);
  const auto s = static_cast<cudaStream_t>(stream);
  if (layout.head_dim == 128) {
    launch_prefill<128>(grid, p, s);
  } else {
    launch_prefill<64>(grid, p, s);
  }
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::attention
