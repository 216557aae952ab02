// Split-KV attention of a few FP8 queries per sequence over a paged INT4 KV cache (decode). It is
// correct for any number of queries, but every chunk of 8 query rows streams the KV again: long query
// chunks belong to paged_attention_prefill. Memory-bound: the kernel's job is to stream the INT4 K
// and V bytes once at HBM speed, with every query head of a KV head sharing the read.
//
// A CTA = (split of the sequence's 64-token tiles) x (KV head, chunk of 8 query rows) x (sequence);
// a query row is (query token, query head of the group). Each of its 4 warps takes whole 64-token
// tiles and runs two mma.sync.m16n8k16 products with FP32 accumulators:
//   S^T[tokens x rows] = K[tokens x d] . Q^T[d x rows]      (A = K from the cache, B = Q)
//   O^T[d x rows]     += V^T[d x tokens] . P^T[tokens x rows] (A = V^T from the cache, B = P)
// INT4 -> FP16 is exact (a LOP3 that builds 1024 + (n ^ 8) and one HSUB2), so is FP8 Q -> FP16; the
// per-token K scale multiplies the FP32 scores, the per-token V scale multiplies P before its FP16
// rounding (PRounding::fp16 in the reference). Because a dot product does not care in which order
// its terms come, each thread loads whole 16- or 8-byte pieces of a cache row and we permute the
// matching Q channels and P tokens instead (tile_token_of_row, q_channel_of_pair): no transposes,
// and each thread reads back from shared memory exactly the bytes it copied there. S^T's accumulator
// layout becomes P^T's operand layout with one movmatrix.trans.
// Each warp streams its tiles through a private kStages-deep cp.async pipeline in shared memory, so
// that the next tiles' bytes are in flight while it computes on the current one.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

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

constexpr int kTileTokens = 64;   // per warp iteration: 4 MMA row tiles of 16 tokens
constexpr int kWarps = 4;
constexpr int kRowsPerCta = 8;    // query rows: the n = 8 of m16n8k16
constexpr int kStages = 2;        // tiles per warp in shared memory (cp.async groups)
constexpr int kCtasPerSm = 3;     // what shared memory (67 KB per CTA) and registers (134) allow
constexpr int kMaxSplits = 64;

struct SplitKvParams : detail::KernelParams {
  int chunks;           // row chunks per KV head
  int splits;
  int tiles_per_split;
  float* partial_o;     // [batch][kv_heads][chunks][splits][8][d], unnormalised
  float2* partial_ml;   // [batch][kv_heads][chunks][splits][8]: (row max, row sum) in the log2 domain
};

// ---------------------------------------------------------------------------------------------
// Warp-level primitives.

__device__ __forceinline__ uint32_t transpose_8x8_f16(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Row rho (0..15) of MMA row tile j in a 64-token tile -> token offset in the tile. Chosen so that
// after movmatrix.trans thread t holds P for tokens 16t + {8(j>>1) + 2(j&1)} + {0,4} and {1,5},
// which is pair 2j and 2j+1 of the V^T bytes the same thread loaded (tokens 16t .. 16t + 15).
__device__ __forceinline__ int tile_token_of_row(int j, int rho) {
  const int base = 8 * (j >> 1) + 2 * (j & 1) + (rho >> 3);
  const int r = rho & 7;
  return 16 * (r >> 1) + base + 4 * (r & 1);
}

// Channel of element `high` (0/1) of pair p of thread t's slice of a K row (the Q channel to match).
template <int kHeadDim>
__device__ __forceinline__ int q_channel_of_pair(int t, int p, int high) {
  return t * (kHeadDim / 4) + 8 * (p >> 2) + (p & 3) + 4 * high;
}

// One warp's share of one pipeline stage: a 64-token tile. Laid out [piece][lane] so that a warp's
// 16- or 8-byte accesses to one piece are conflict-free.
template <int kHeadDim>
struct TileStage {
  static constexpr int kKBytes = kHeadDim / 8;  // a thread's quarter of a K row
  uint8_t k[8][32][kKBytes];                     // [j * 2 + row half][lane]
  uint2 v[kHeadDim / 8][32];                     // [d tile * 2 + row half][lane]: tokens 16t .. 16t+15
  uint16_t k_scale[kTileTokens], v_scale[kTileTokens];
};

template <int kHeadDim>
constexpr size_t kSmemBytes = std::max(sizeof(TileStage<kHeadDim>) * kStages * kWarps,
                                       sizeof(float) * kWarps * kRowsPerCta * (kHeadDim + 2));

// ---------------------------------------------------------------------------------------------
template <int kHeadDim>
__global__ void __launch_bounds__(kWarps * 32) paged_attention_splitkv_kernel(const SplitKvParams p) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head_dim 64 or 128");
  constexpr int kSteps = kHeadDim / 16;      // k-steps of S = K Q^T, and d row tiles of O^T
  constexpr int kKWords = kHeadDim / 32;     // words of a K row per thread (a quarter row)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y / p.chunks, chunk = blockIdx.y % p.chunks, split = blockIdx.x;
  const int q_begin = p.query_start[b], q_len = p.query_start[b + 1] - q_begin, seq_len = p.seq_lens[b];
  const int rows = q_len * p.group, row0 = chunk * kRowsPerCta;
  if (row0 >= rows) return;  // this sequence has fewer query rows than the grid allows for
  const int last_row = min(rows, row0 + kRowsPerCta) - 1;
  const int kv_end = seq_len - q_len + last_row / p.group + 1;  // causal bound of the chunk
  const int tile_begin = split * p.tiles_per_split;
  const int token_end = min(kv_end, (tile_begin + p.tiles_per_split) * kTileTokens);

  // Q as the B operand: column g is row0 + g; pairs follow the K slice this thread loads.
  uint32_t q_frag[kSteps][2];
  {
    const int row = row0 + g;
    const bool valid = row < rows;
    const uint8_t* q_row =
        p.q + (int64_t(q_begin + row / p.group) * p.q_heads + h * p.group + row % p.group) * kHeadDim;
    #pragma unroll
    for (int s = 0; s < kSteps; ++s)
      #pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int pair = 2 * s + half;
        const float lo = valid ? fp8_e4m3_to_float(q_row[q_channel_of_pair<kHeadDim>(t, pair, 0)]) : 0.0f;
        const float hi = valid ? fp8_e4m3_to_float(q_row[q_channel_of_pair<kHeadDim>(t, pair, 1)]) : 0.0f;
        q_frag[s][half] = pack_f16x2(lo, hi);  // exact: e4m3 values are FP16 values
      }
  }
  // Per column (rows 2t, 2t+1): score factor and causal limit.
  float col_factor[2];
  int col_last_pos[2];
  #pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int row = min(row0 + 2 * t + c, rows - 1);
    const int query = row / p.group;
    col_factor[c] =
        bf16_bits_to_float(p.q_scale[int64_t(q_begin + query) * p.q_heads + h * p.group + row % p.group]) *
        p.score_factor;
    col_last_pos[c] = seq_len - q_len + query;
  }

  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  float o_acc[kSteps][4] = {};
  const int32_t* pages = p.block_table + int64_t(b) * p.max_pages_per_seq;
  const int page_size = p.layout.page_size;

  extern __shared__ __align__(16) uint8_t smem[];
  TileStage<kHeadDim>* stages = reinterpret_cast<TileStage<kHeadDim>*>(smem) + warp * kStages;

  // Issues the copies of this warp's `index`-th tile into stage index % kStages (nothing past the end).
  // A thread's 8 K rows all lie in the tile's 16-token chunk g/2 (tile_token_of_row), its V^T pieces
  // in chunk t, its 4 scales in chunk (lane % 16) / 4: three block-table lookups per tile.
  const int first_tile = tile_begin + warp;
  auto chunk_slot = [&](int pos) {  // (page * kv_heads + h) * page_size + slot of a cached position
    return (int64_t(pages[pos >> p.page_shift]) * p.layout.kv_heads + h) * page_size + (pos & (page_size - 1));
  };
  auto issue_tile = [&](int index) {
    const int tile_start = (first_tile + index * kWarps) * kTileTokens;
    if (tile_start >= token_end) return;
    TileStage<kHeadDim>& st = stages[index % kStages];
    {
      const int chunk_pos = tile_start + 16 * (g >> 1) + 4 * (g & 1);
      const uint8_t* row0 = p.k + (chunk_pos < token_end ? chunk_slot(chunk_pos) * (kHeadDim / 2) + t * (kHeadDim / 8) : 0);
      #pragma unroll
      for (int j = 0; j < 4; ++j)
        #pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const int inner = 8 * (j >> 1) + 2 * (j & 1) + rh;  // tile_token_of_row(j, g + 8 rh) - chunk_pos + tile_start
          const bool valid = chunk_pos + inner < token_end;
          // The 256-byte L2 prefetch: a tile's K rows of a page are read by 8 different copy
          // instructions, so the neighbours come in with the first.
          detail::copy_async<kHeadDim / 8, true>(st.k[j * 2 + rh][lane], valid ? row0 + inner * (kHeadDim / 2) : p.k,
                                                 valid);
        }
    }
    {
      const int pos = tile_start + 16 * t;  // this thread's 16 tokens of every V^T channel row
      const bool valid = pos < token_end;
      const int64_t slot = valid ? chunk_slot(pos) : 0;
      // v_channel_offset(page, h, c) + slot / 2 = ((page * kv_heads + h) * d + c) * page_size / 2 + slot / 2
      const uint8_t* channel0 =
          p.v + ((slot >> p.page_shift) * kHeadDim + g) * (page_size / 2) + (slot & (page_size - 1)) / 2;
      #pragma unroll
      for (int i = 0; i < kSteps; ++i)
        #pragma unroll
        for (int rh = 0; rh < 2; ++rh)
          detail::copy_async<8, true>(&st.v[i * 2 + rh][lane], valid ? channel0 + (16 * i + 8 * rh) * (page_size / 2) : p.v, valid);
    }
    {
      const int pos = tile_start + 4 * (lane % 16);  // lanes 0-15: K scales, 16-31: V scales, 4 tokens each
      const bool valid = pos < token_end;
      const uint16_t* scales = lane < 16 ? p.k_scale : p.v_scale;
      detail::copy_async<8, true>((lane < 16 ? st.k_scale : st.v_scale) + 4 * (lane % 16), valid ? scales + chunk_slot(pos) : scales,
                    valid);
    }
  };

  const int my_tiles = token_end > first_tile * kTileTokens
                           ? ((token_end - first_tile * kTileTokens + kTileTokens - 1) / kTileTokens + kWarps - 1) / kWarps
                           : 0;
  #pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    issue_tile(i);
    copy_async_commit();
  }
  for (int index = 0; index < my_tiles; ++index) {
    __syncwarp();  // every lane is done reading the stage that the next copies overwrite
    issue_tile(index + kStages - 1);
    copy_async_commit();
    copy_async_wait<kStages - 1>();
    __syncwarp();  // the scales were copied by other lanes
    const TileStage<kHeadDim>& st = stages[index % kStages];
    const int tile_start = (first_tile + index * kWarps) * kTileTokens;

    // S^T = K Q^T, scaled into the log2 domain, masked.
    float s[4][4];
    float v_scale[4][2];
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t k_words[2][kKWords];
      #pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        if constexpr (kKWords == 4) {
          const uint4 x = *reinterpret_cast<const uint4*>(st.k[j * 2 + rh][lane]);
          k_words[rh][0] = x.x; k_words[rh][1] = x.y; k_words[rh][2] = x.z; k_words[rh][3] = x.w;
        } else {
          const uint2 x = *reinterpret_cast<const uint2*>(st.k[j * 2 + rh][lane]);
          k_words[rh][0] = x.x; k_words[rh][1] = x.y;
        }
      }
      #pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
      #pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        const int word = step / 2, nib = 2 * (step % 2);
        const uint32_t a[4] = {int4_pair_to_f16x2(k_words[0][word], nib), int4_pair_to_f16x2(k_words[1][word], nib),
                               int4_pair_to_f16x2(k_words[0][word], nib + 1),
                               int4_pair_to_f16x2(k_words[1][word], nib + 1)};
        mma_f16_16816(s[j], a, q_frag[step][0], q_frag[step][1]);
      }
      #pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int offset = tile_token_of_row(j, g + 8 * rh), pos = tile_start + offset;
        const bool in_split = pos < token_end;
        const float k_scale = bf16_bits_to_float(st.k_scale[offset]);
        v_scale[j][rh] = in_split ? bf16_bits_to_float(st.v_scale[offset]) : 0.0f;  // past the end: garbage
        #pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = s[j][2 * rh + c];
          x = (in_split && pos <= col_last_pos[c]) ? (x * k_scale) * col_factor[c] : -INFINITY;
        }
      }
    }

    // Online softmax per column; the max is shared by the 8 threads of a column (lanes t + 4g).
    float tile_max[2] = {-INFINITY, -INFINITY};
    #pragma unroll
    for (int j = 0; j < 4; ++j)
      #pragma unroll
      for (int e = 0; e < 4; ++e) tile_max[e & 1] = fmaxf(tile_max[e & 1], s[j][e]);
    float alpha[2], base[2];
    #pragma unroll
    for (int c = 0; c < 2; ++c) {
      #pragma unroll
      for (int off = 4; off < 32; off *= 2) tile_max[c] = fmaxf(tile_max[c], __shfl_xor_sync(0xFFFFFFFFu, tile_max[c], off));
      const float new_max = fmaxf(row_max[c], tile_max[c]);
      base[c] = new_max == -INFINITY ? 0.0f : new_max;
      alpha[c] = exp2f(row_max[c] - base[c]);
      row_max[c] = new_max;
      row_sum[c] *= alpha[c];
    }
    #pragma unroll
    for (int i = 0; i < kSteps; ++i)
      #pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[i][e] *= alpha[e & 1];

    // P (times the token's V scale) to FP16, transposed into the B operand, then O^T += V^T P^T.
    uint32_t p_frag[4][2];
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
      float pv[4];
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float prob = exp2f(s[j][e] - base[e & 1]);
        row_sum[e & 1] += prob;
        pv[e] = prob * v_scale[j][e >> 1];
      }
      p_frag[j][0] = transpose_8x8_f16(pack_f16x2(pv[0], pv[1]));
      p_frag[j][1] = transpose_8x8_f16(pack_f16x2(pv[2], pv[3]));
    }
    #pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      const uint2 lo = st.v[i * 2][lane], hi = st.v[i * 2 + 1][lane];
      #pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int nib = 2 * (j & 1);
        const uint32_t w_lo = (j >> 1) ? lo.y : lo.x, w_hi = (j >> 1) ? hi.y : hi.x;
        const uint32_t a[4] = {int4_pair_to_f16x2(w_lo, nib), int4_pair_to_f16x2(w_hi, nib),
                               int4_pair_to_f16x2(w_lo, nib + 1), int4_pair_to_f16x2(w_hi, nib + 1)};
        mma_f16_16816(o_acc[i], a, p_frag[j][0], p_frag[j][1]);
      }
    }
  }
  copy_async_wait<0>();  // no copy may land in the buffers the epilogue reuses
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");  // the combine may start its launch

  // Column sums over the 8 threads of a column, then the 4 warps merge through shared memory.
  #pragma unroll
  for (int c = 0; c < 2; ++c)
    #pragma unroll
    for (int off = 4; off < 32; off *= 2) row_sum[c] += __shfl_xor_sync(0xFFFFFFFFu, row_sum[c], off);

  __syncthreads();  // all warps are done with their pipeline stages
  auto smem_o = reinterpret_cast<float (*)[kRowsPerCta][kHeadDim]>(smem);
  auto smem_max = reinterpret_cast<float (*)[kRowsPerCta]>(smem + sizeof(float) * kWarps * kRowsPerCta * kHeadDim);
  auto smem_sum = smem_max + kWarps;
  #pragma unroll
  for (int i = 0; i < kSteps; ++i)
    #pragma unroll
    for (int e = 0; e < 4; ++e) smem_o[warp][2 * t + (e & 1)][16 * i + g + 8 * (e >> 1)] = o_acc[i][e];
  if (g == 0) {
    #pragma unroll
    for (int c = 0; c < 2; ++c) {
      smem_max[warp][2 * t + c] = row_max[c];
      smem_sum[warp][2 * t + c] = row_sum[c];
    }
  }
  __syncthreads();

  // Warp w finishes rows w and w + 4: merge the 4 warps' partial softmaxes.
  for (int r = warp; r < kRowsPerCta; r += kWarps) {
    const int row = row0 + r;
    if (row >= rows) continue;
    float merged_max = -INFINITY;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) merged_max = fmaxf(merged_max, smem_max[w][r]);
    const float ref = merged_max == -INFINITY ? 0.0f : merged_max;
    float weight[kWarps], merged_sum = 0.0f;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      weight[w] = exp2f(smem_max[w][r] - ref);
      merged_sum += smem_sum[w][r] * weight[w];
    }
    const int64_t partial = ((int64_t(b) * p.layout.kv_heads + h) * p.chunks + chunk) * p.splits + split;
    if (p.splits == 1) {  // the whole sequence: normalise and write the output here
      const int64_t token = q_begin + row / p.group, out_row = token * p.q_heads + h * p.group + row % p.group;
      float absmax = 0.0f;
      for (int c = lane; c < kHeadDim; c += 32) {
        float o = 0.0f;
        #pragma unroll
        for (int w = 0; w < kWarps; ++w) o += smem_o[w][r][c] * weight[w];
        const uint16_t value = bf16_from_float(o / merged_sum);
        absmax = fmaxf(absmax, fabsf(bf16_bits_to_float(value)));
        p.out[out_row * kHeadDim + c] = value;
      }
      if (p.fp8.codes) detail::fp8_epilogue_warp_row(p, token, absmax, lane);
    } else {
      float* dst = p.partial_o + (partial * kRowsPerCta + r) * kHeadDim;
      for (int c = lane; c < kHeadDim; c += 32) {
        float o = 0.0f;
        #pragma unroll
        for (int w = 0; w < kWarps; ++w) o += smem_o[w][r][c] * weight[w];
        dst[c] = o;
      }
      if (lane == 0) p.partial_ml[partial * kRowsPerCta + r] = make_float2(merged_max, merged_sum);
    }
  }
}

// One warp per query row: merges the splits' partial softmaxes and writes BF16. The split weights
// come first (lanes over splits), then every lane's channels over all splits with independent loads.
template <int kHeadDim>
__global__ void __launch_bounds__(kRowsPerCta * 32) combine_splits_kernel(const SplitKvParams p) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the main kernel's partials are written
  const int r = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y / p.chunks, chunk = blockIdx.y % p.chunks;
  const int q_begin = p.query_start[b], q_len = p.query_start[b + 1] - q_begin;
  const int row = chunk * kRowsPerCta + r;
  if (row >= q_len * p.group) return;
  const int64_t first = ((int64_t(b) * p.layout.kv_heads + h) * p.chunks + chunk) * p.splits;
  __shared__ float weights[kRowsPerCta][kMaxSplits];
  float merged_max = -INFINITY;
  for (int s = lane; s < p.splits; s += 32) merged_max = fmaxf(merged_max, p.partial_ml[(first + s) * kRowsPerCta + r].x);
  #pragma unroll
  for (int off = 16; off > 0; off /= 2) merged_max = fmaxf(merged_max, __shfl_xor_sync(0xFFFFFFFFu, merged_max, off));
  float merged_sum = 0.0f;
  for (int s = lane; s < p.splits; s += 32) {
    const float2 ml = p.partial_ml[(first + s) * kRowsPerCta + r];
    const float w = ml.x == -INFINITY ? 0.0f : exp2f(ml.x - merged_max);  // -inf: past the causal end
    weights[r][s] = w;
    merged_sum += ml.y * w;
  }
  #pragma unroll
  for (int off = 16; off > 0; off /= 2) merged_sum += __shfl_xor_sync(0xFFFFFFFFu, merged_sum, off);
  __syncwarp();
  constexpr int kPerLane = kHeadDim / 32;  // contiguous channels per lane
  using Vec = std::conditional_t<kPerLane == 4, float4, float2>;
  float o[kPerLane] = {};
  const float* src = p.partial_o + (first * kRowsPerCta + r) * kHeadDim + lane * kPerLane;
  #pragma unroll 8
  for (int s = 0; s < p.splits; ++s) {
    const float w = weights[r][s];
    const Vec x = *reinterpret_cast<const Vec*>(src + int64_t(s) * kRowsPerCta * kHeadDim);
    o[0] += x.x * w;
    o[1] += x.y * w;
    if constexpr (kPerLane == 4) {
      o[2] += x.z * w;
      o[3] += x.w * w;
    }
  }
  const int64_t token = q_begin + row / p.group, out_row = token * p.q_heads + h * p.group + row % p.group;
  float absmax = 0.0f;
  #pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const uint16_t value = bf16_from_float(o[i] / merged_sum);
    absmax = fmaxf(absmax, fabsf(bf16_bits_to_float(value)));
    p.out[out_row * kHeadDim + lane * kPerLane + i] = value;
  }
  if (p.fp8.codes) detail::fp8_epilogue_warp_row(p, token, absmax, lane);
}

// ---------------------------------------------------------------------------------------------
// Launch plan: enough CTAs to cover the SMs a few times over, each warp with whole tiles.
struct SplitPlan {
  int chunks, splits, tiles_per_split;
};

int sm_count() {  // of the current device; launchers may be called during graph capture
  int device = 0, count = 0;
  FIREQ_CUDA_CHECK(cudaGetDevice(&device));
  FIREQ_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

SplitPlan plan_splits(const PagedAttentionArgs& args) {
  const int group = args.q_heads / args.cache.layout.kv_heads;
  const int chunks = (args.max_query_len * group + kRowsPerCta - 1) / kRowsPerCta;
  const int tiles = (args.max_seq_len + kTileTokens - 1) / kTileTokens;
  const int64_t units = int64_t{args.sequences.batch} * args.cache.layout.kv_heads * chunks;
  const int64_t target_ctas = int64_t{kCtasPerSm} * sm_count();  // one wave
  const int max_splits = std::clamp((tiles + kWarps - 1) / kWarps, 1, kMaxSplits);
  // Round down: a second, partial wave costs more than slightly longer splits.
  int splits = static_cast<int>(std::clamp<int64_t>(target_ctas / units, 1, max_splits));
  const int tiles_per_split = (tiles + splits - 1) / splits;
  splits = (tiles + tiles_per_split - 1) / tiles_per_split;
  return SplitPlan{chunks, splits, tiles_per_split};
}

int64_t partial_rows(const PagedAttentionArgs& args, const SplitPlan& plan) {
  return int64_t{args.sequences.batch} * args.cache.layout.kv_heads * plan.chunks * plan.splits * kRowsPerCta;
}

template <int kHeadDim>
void launch_main(dim3 grid, const SplitKvParams& p, cudaStream_t stream) {
  constexpr int kBytes = static_cast<int>(kSmemBytes<kHeadDim>);
  FIREQ_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_splitkv_kernel<kHeadDim>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
  paged_attention_splitkv_kernel<kHeadDim><<<grid, kWarps * 32, kBytes, stream>>>(p);
}

}  // namespace

size_t paged_attention_workspace_bytes(const PagedAttentionArgs& args) {
  check_shapes(args);
  const SplitPlan plan = plan_splits(args);
  if (plan.splits == 1) return 0;
  const int64_t rows = partial_rows(args, plan);
  return size_t(rows) * (args.cache.layout.head_dim * sizeof(float) + sizeof(float2));
}

void paged_attention_splitkv(const PagedAttentionArgs& args, void* workspace, void* stream) {
  check_shapes(args);
  const SplitPlan plan = plan_splits(args);
  const PagedKvLayout& layout = args.cache.layout;
  if (plan.splits > 1 && !workspace) fail("paged_attention_splitkv: workspace is null but ", plan.splits, " splits need one");
  if (int64_t{layout.kv_heads} * plan.chunks > 65535 || args.sequences.batch > 65535)
    fail("paged_attention_splitkv: grid too large (kv_heads * row chunks ", int64_t{layout.kv_heads} * plan.chunks,
         ", batch ", args.sequences.batch, "; at most 65535 each)");
  const auto s = static_cast<cudaStream_t>(stream);
  SplitKvParams p{};
  static_cast<detail::KernelParams&>(p) = detail::make_kernel_params(args, s);
  p.chunks = plan.chunks;
  p.splits = plan.splits;
  p.tiles_per_split = plan.tiles_per_split;
  const int64_t rows = partial_rows(args, plan);
  p.partial_o = static_cast<float*>(workspace);
  p.partial_ml = plan.splits > 1 ? reinterpret_cast<float2*>(p.partial_o + rows * layout.head_dim) : nullptr;

  const dim3 grid(plan.splits, layout.kv_heads * plan.chunks, args.sequences.batch);
  if (layout.head_dim == 128) {
    launch_main<128>(grid, p, s);
  } else {
    launch_main<64>(grid, p, s);
  }
  FIREQ_CUDA_CHECK_LAUNCH();
  if (plan.splits > 1) {
    // Programmatic dependent launch: the combine is scheduled while the main kernel drains and
    // waits for its writes (griddepcontrol.wait) instead of paying a full launch gap.
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(1, layout.kv_heads * plan.chunks, args.sequences.batch);
    config.blockDim = dim3(kRowsPerCta * 32);
    config.stream = s;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    if (layout.head_dim == 128) {
      FIREQ_CUDA_CHECK(cudaLaunchKernelEx(&config, combine_splits_kernel<128>, p));
    } else {
      FIREQ_CUDA_CHECK(cudaLaunchKernelEx(&config, combine_splits_kernel<64>, p));
    }
  }
}

}  // namespace fireq::attention
