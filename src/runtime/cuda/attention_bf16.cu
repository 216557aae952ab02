// Causal attention over the paged BF16 KV cache, FP32 arithmetic on CUDA cores: the BF16 path's
// exact-softmax kernel (online softmax over key tiles, as FlashAttention, without tensor cores).
//
// One block per (work item, KV head, key split). Its rows are the item's queries times the query
// heads of that KV head's GQA group (kRows = 64 for prefill, 8 for decode steps), so a K/V tile in
// shared memory serves all of them. Per tile of 32 keys, three phases separated by barriers:
//   S = Q K^T  each thread a small register tile of S (Q and K transposed in shared memory, so a
//              thread's operands are one or two vector loads per channel),
//   softmax    warp w owns rows w, w + 8, ...: running max and sum, P written over S,
//   O += P V   each thread a register tile of O (rows x channels), rescaled by the row's factor.
// Splits (decode, where items x heads cannot fill the GPU) are merged by a second kernel from each
// split's (max, sum, unnormalized output).
#include <algorithm>
#include <cmath>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "kernels.h"

namespace fireq::cuda_runtime {
namespace {

constexpr int kKeyTile = 32;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMinKeysPerSplit = 128;
// Blocks wanted in flight: a block walks its keys one tile at a time without prefetching, so the
// GPU needs many of them to cover the memory latency (decode is latency-bound, not FLOP-bound).
constexpr int kTargetBlocksPerSm = 8;
constexpr int kDecodeRows = 8;

template <int kRows, int kHeadDim>
struct Tiling {
  static_assert(kRows == kAttentionRows || kRows == kDecodeRows, "two row counts: prefill and decode");
  static constexpr int kQkKeys = kRows == kAttentionRows ? 4 : 1;  // S tile of a thread
  static constexpr int kKeyGroups = kKeyTile / kQkKeys;
  static constexpr int kQkRows = kRows / (kThreads / kKeyGroups);
  static constexpr int kPvRows = kRows == kAttentionRows ? 4 : 1;  // O tile of a thread
  static constexpr int kPvChannels = kRows * kHeadDim / kThreads / kPvRows;
  static constexpr int kChannelGroups = kHeadDim / kPvChannels;
  static constexpr int kRowsPerWarp = kRows / kWarps;  // softmax
  static constexpr int kVStride = kHeadDim + 4;        // keeps float4 rows 16-byte aligned, banks spread
  static constexpr int kSStride = kKeyTile + 1;
  // Shared memory, in floats: Q^T [d][rows], K^T [d][keys], V [keys][d + 4], S/P [rows][keys + 1],
  // the rows' rescale factors, then their final max and sum.
  static constexpr int kQ = kHeadDim * kRows, kK = kHeadDim * kKeyTile, kV = kKeyTile * kVStride;
  static constexpr int kS = kRows * kSStride;
  static constexpr size_t kSharedBytes = sizeof(float) * (size_t(kQ) + kK + kV + kS + 3 * kRows);
  static_assert((kRows / kQkRows) * kKeyGroups == kThreads && (kRows / kPvRows) * kChannelGroups == kThreads,
                "every thread owns one S tile and one O tile");
};

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// N consecutive floats from shared memory in one vector load where N allows.
template <int N>
__device__ __forceinline__ void load_floats(const float* p, float (&out)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    out[0] = v.x, out[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = p[i];
  }
}

template <int kRows, int kHeadDim>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a, StepMetadata step) {
  using T = Tiling<kRows, kHeadDim>;
  extern __shared__ float4 shared4[];
  float* q_t = reinterpret_cast<float*>(shared4);
  float* k_t = q_t + T::kQ;
  float* v_s = k_t + T::kK;
  float* s_s = v_s + T::kV;
  float* correction_s = s_s + T::kS;
  float* max_s = correction_s + kRows;
  float* sum_s = max_s + kRows;

  const KvPool& pool = a.pool;
  const int group = a.q_heads / pool.kv_heads;
  const int item = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = a.item_first_token[item], queries = a.item_queries[item];
  const int rows = queries * group;
  const int32_t* table = step.block_table + step.token_chunk[first] * step.table_stride;
  const int key_begin = split * a.keys_per_split;
  const int key_end = min(key_begin + a.keys_per_split, step.positions[first + queries - 1] + 1);

  for (int i = threadIdx.x; i < kRows * kHeadDim; i += kThreads) {  // rows fastest: conflict-free stores
    const int r = i % kRows, c = i / kRows;
    q_t[i] = r < rows ? a.q[((size_t(first) + r / group) * a.q_heads + kv_head * group + r % group) * kHeadDim + c]
                      : 0.0f;
  }
  float m[T::kRowsPerWarp], l[T::kRowsPerWarp];
  int row_position[T::kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < T::kRowsPerWarp; ++j) {
    const int r = warp + kWarps * j;
    m[j] = -INFINITY;
    l[j] = 0.0f;
    row_position[j] = r < rows ? step.positions[first + r / group] : -1;
  }
  const int qk_row0 = threadIdx.x / T::kKeyGroups * T::kQkRows, qk_key0 = threadIdx.x % T::kKeyGroups * T::kQkKeys;
  const int pv_row0 = threadIdx.x / T::kChannelGroups * T::kPvRows;
  const int pv_channel0 = threadIdx.x % T::kChannelGroups * T::kPvChannels;
  float acc[T::kPvRows][T::kPvChannels] = {};

  for (int tile = key_begin; tile < key_end; tile += kKeyTile) {
    __syncthreads();  // Q loaded / the previous tile's P V done
    // K^T and V of the tile; lanes take consecutive keys so the K^T stores hit distinct banks.
    for (int u = threadIdx.x; u < kKeyTile * kHeadDim / 8; u += kThreads) {
      const int key = u % kKeyTile, c8 = u / kKeyTile * 8, position = tile + key;
      uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
      if (position < key_end) {
        const int page = table[position / pool.page_size], slot = position % pool.page_size;
        kw = *reinterpret_cast<const uint4*>(pool.base + pool.offset(a.layer, page, 0, kv_head, slot) + c8);
        vw = *reinterpret_cast<const uint4*>(pool.base + pool.offset(a.layer, page, 1, kv_head, slot) + c8);
      }
      const uint16_t* kh = reinterpret_cast<const uint16_t*>(&kw);
      const uint16_t* vh = reinterpret_cast<const uint16_t*>(&vw);
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        k_t[(c8 + e) * kKeyTile + key] = bf16_to_float(kh[e]);
        v[e] = bf16_to_float(vh[e]);
      }
      float4* v_row = reinterpret_cast<float4*>(v_s + key * T::kVStride + c8);
      v_row[0] = make_float4(v[0], v[1], v[2], v[3]);
      v_row[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
    __syncthreads();

    {  // S = Q K^T
      float s[T::kQkRows][T::kQkKeys] = {};
#pragma unroll 8
      for (int c = 0; c < kHeadDim; ++c) {
        float q[T::kQkRows], k[T::kQkKeys];
        load_floats(q_t + c * kRows + qk_row0, q);
        load_floats(k_t + c * kKeyTile + qk_key0, k);
#pragma unroll
        for (int i = 0; i < T::kQkRows; ++i)
#pragma unroll
          for (int j = 0; j < T::kQkKeys; ++j) s[i][j] = fmaf(q[i], k[j], s[i][j]);
      }
#pragma unroll
      for (int i = 0; i < T::kQkRows; ++i)
#pragma unroll
        for (int j = 0; j < T::kQkKeys; ++j) s_s[(qk_row0 + i) * T::kSStride + qk_key0 + j] = s[i][j];
    }
    __syncthreads();

    const int key_position = tile + lane;  // softmax: lane = key
#pragma unroll
    for (int j = 0; j < T::kRowsPerWarp; ++j) {
      const int r = warp + kWarps * j;
      float* row = s_s + r * T::kSStride;
      const bool visible = key_position < key_end && key_position <= row_position[j];
      const float x = visible ? row[lane] * a.scale : -INFINITY;
      const float m_new = fmaxf(m[j], warp_max(x));
      float p = 0.0f, correction = 1.0f;
      if (m_new != -INFINITY) {  // warp-uniform
        correction = expf(m[j] - m_new);
        p = visible ? expf(x - m_new) : 0.0f;
        l[j] = l[j] * correction + warp_sum(p);
        m[j] = m_new;
      }
      row[lane] = p;
      if (lane == 0) correction_s[r] = correction;
    }
    __syncthreads();

    // O = O * correction + P V
#pragma unroll
    for (int i = 0; i < T::kPvRows; ++i) {
      const float correction = correction_s[pv_row0 + i];
#pragma unroll
      for (int c = 0; c < T::kPvChannels; ++c) acc[i][c] *= correction;
    }
#pragma unroll 4
    for (int key = 0; key < kKeyTile; ++key) {
      float v[T::kPvChannels];
      load_floats(v_s + key * T::kVStride + pv_channel0, v);
#pragma unroll
      for (int i = 0; i < T::kPvRows; ++i) {
        const float p = s_s[(pv_row0 + i) * T::kSStride + key];
#pragma unroll
        for (int c = 0; c < T::kPvChannels; ++c) acc[i][c] = fmaf(p, v[c], acc[i][c]);
      }
    }
  }

  // The rows' max and sum live in the softmax warps; the outputs in the P V tiles.
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < T::kRowsPerWarp; ++j) {
      max_s[warp + kWarps * j] = m[j];
      sum_s[warp + kWarps * j] = l[j];
    }
  }
  __syncthreads();
  const size_t block = (size_t(item) * gridDim.y + kv_head) * a.splits + split;
#pragma unroll
  for (int i = 0; i < T::kPvRows; ++i) {
    const int r = pv_row0 + i;
    if (r >= rows) continue;
    if (a.splits == 1) {
      const size_t token = size_t(first) + r / group;
      uint16_t* out = a.out + (token * a.q_heads + kv_head * group + r % group) * kHeadDim + pv_channel0;
      const float inv = 1.0f / sum_s[r];
#pragma unroll
      for (int c = 0; c < T::kPvChannels; ++c) out[c] = bf16_from_float(acc[i][c] * inv);
    } else {
      float* partial = a.workspace + (block * kAttentionRows + r) * kHeadDim + pv_channel0;
#pragma unroll
      for (int c = 0; c < T::kPvChannels; ++c) partial[c] = acc[i][c];
      if (pv_channel0 == 0) {
        float* ml = a.workspace + size_t(kMaxSplitBlocks) * kAttentionRows * kHeadDim + (block * kAttentionRows + r) * 2;
        ml[0] = max_s[r];
        ml[1] = sum_s[r];
      }
    }
  }
}

// out = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s over the splits of one (item, KV head).
__global__ void merge_splits_kernel(AttentionArgs a, int kv_heads, int d) {
  const int item = blockIdx.x, kv_head = blockIdx.y;
  const int group = a.q_heads / kv_heads;
  const int rows = a.item_queries[item] * group, first = a.item_first_token[item];
  const size_t block0 = (size_t(item) * kv_heads + kv_head) * a.splits;
  const float* ml = a.workspace + size_t(kMaxSplitBlocks) * kAttentionRows * d;
  for (int i = threadIdx.x; i < rows * d; i += blockDim.x) {
    const int r = i / d, c = i % d;
    float m = -INFINITY;
    for (int s = 0; s < a.splits; ++s) m = fmaxf(m, ml[((block0 + s) * kAttentionRows + r) * 2]);
    float sum = 0.0f, value = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const size_t at = (block0 + s) * kAttentionRows + r;
      const float ms = ml[at * 2];
      if (ms == -INFINITY) continue;
      const float w = expf(ms - m);
      sum += w * ml[at * 2 + 1];
      value += w * a.workspace[at * d + c];
    }
    const size_t token = size_t(first) + r / group;
    a.out[(token * a.q_heads + kv_head * group + r % group) * d + c] = bf16_from_float(value / sum);
  }
}

template <int kRows, int kHeadDim>
void launch(const AttentionArgs& args, const StepMetadata& step, cudaStream_t stream) {
  using T = Tiling<kRows, kHeadDim>;
  static bool attribute_set = false;  // one device per process
  if (!attribute_set) {
    FIREQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<kRows, kHeadDim>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(T::kSharedBytes)));
    attribute_set = true;
  }
  const dim3 grid(args.items, args.pool.kv_heads, args.splits);
  attention_kernel<kRows, kHeadDim><<<grid, kThreads, T::kSharedBytes, stream>>>(args, step);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t attention_workspace_floats(int max_split_blocks, int head_dim) {
  return size_t(max_split_blocks) * kAttentionRows * (head_dim + 2);
}

int attention_rows_per_block(int longest_chunk, int gqa_group) {
  return longest_chunk * gqa_group <= kDecodeRows ? kDecodeRows : kAttentionRows;
}

void choose_attention_splits(AttentionArgs& args, int max_keys, int sm_count) {
  const int blocks = args.items * args.pool.kv_heads;
  args.splits = 1;
  args.keys_per_split = max_keys;
  const int target = kTargetBlocksPerSm * sm_count;
  if (blocks >= target) return;
  int splits = std::min((target + blocks - 1) / blocks, (max_keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  splits = std::max(1, std::min(splits, kMaxSplitBlocks / blocks));
  if (splits == 1) return;
  args.keys_per_split = (max_keys + splits - 1) / splits;
  args.keys_per_split = (args.keys_per_split + kKeyTile - 1) / kKeyTile * kKeyTile;
  args.splits = (max_keys + args.keys_per_split - 1) / args.keys_per_split;
}

void paged_attention_bf16(const AttentionArgs& args, const StepMetadata& step, cudaStream_t stream) {
  const int d = args.pool.head_dim, kv_heads = args.pool.kv_heads;
  if (d != 64 && d != 128) fail("BF16 attention: head_dim ", d, " is not supported (64 or 128)");
  if (args.q_heads % kv_heads != 0 || args.queries_per_item * (args.q_heads / kv_heads) > args.rows_per_block)
    fail("BF16 attention: ", args.queries_per_item, " queries x GQA group ", args.q_heads / kv_heads,
         " exceed ", args.rows_per_block, " rows per block");
  if (args.splits > 1 && (!args.workspace || size_t(args.items) * kv_heads * args.splits > size_t(kMaxSplitBlocks)))
    fail("BF16 attention: split-KV needs a workspace of ", kMaxSplitBlocks, " blocks");
  const bool decode = args.rows_per_block == kDecodeRows;
  if (!decode && args.rows_per_block != kAttentionRows)
    fail("BF16 attention: rows_per_block must be ", kDecodeRows, " or ", kAttentionRows);
  if (d == 64) {
    decode ? launch<kDecodeRows, 64>(args, step, stream) : launch<kAttentionRows, 64>(args, step, stream);
  } else {
    decode ? launch<kDecodeRows, 128>(args, step, stream) : launch<kAttentionRows, 128>(args, step, stream);
  }
  if (args.splits > 1) {
    merge_splits_kernel<<<dim3(args.items, kv_heads), 256, 0, stream>>>(args, kv_heads, d);
    FIREQ_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace fireq::cuda_runtime
