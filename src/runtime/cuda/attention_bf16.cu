// Causal attention over the paged BF16 KV cache, FP32 arithmetic on CUDA cores: the BF16 path's
// simple, exact-softmax kernel (online softmax over key tiles, as FlashAttention, without tensor
// cores). One block per (work item, KV head, key split); its rows are the item's queries times the
// query heads of that KV head's GQA group, so a K/V tile in shared memory serves all of them.
// Warp w owns rows w, w + 8, ...; lane j scores key j of the tile and owns output channels
// j, j + 32, ... Splits (decode, where items x heads cannot fill the GPU) are merged by a second
// kernel from each split's (max, sum, unnormalized output).
#include <algorithm>
#include <cmath>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "kernels.h"

namespace fireq::cuda_runtime {
namespace {

constexpr int kKeyTile = 32;
constexpr int kWarps = 8;
constexpr int kRowsPerWarp = kAttentionRows / kWarps;
constexpr int kMaxChannelsPerLane = 4;  // head_dim <= 128
constexpr int kMinKeysPerSplit = 64;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

size_t shared_bytes(int d) { return sizeof(float) * (size_t(kAttentionRows) * d + kKeyTile * (d + 1) + kKeyTile * d); }

__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionArgs a, StepMetadata step) {
  extern __shared__ float shared[];
  const KvPool& pool = a.pool;
  const int d = pool.head_dim, lanes_channels = d / 32;
  const int group = a.q_heads / pool.kv_heads;
  const int item = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first = a.item_first_token[item], queries = a.item_queries[item];
  const int rows = queries * group;
  const int32_t* table = step.block_table + step.token_chunk[first] * step.table_stride;
  const int key_begin = split * a.keys_per_split;
  const int key_end = min(key_begin + a.keys_per_split, step.positions[first + queries - 1] + 1);

  float* q_s = shared;                              // [rows][d]
  float* k_s = q_s + kAttentionRows * d;            // [key][d + 1]: lane-strided reads hit distinct banks
  float* v_s = k_s + kKeyTile * (d + 1);            // [key][d]
  for (int i = threadIdx.x; i < kAttentionRows * d; i += blockDim.x) {
    const int r = i / d;
    q_s[i] = r < rows ? a.q[((size_t(first) + r / group) * a.q_heads + kv_head * group + r % group) * d + i % d] : 0.0f;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kMaxChannelsPerLane];
  int row_position[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int r = warp + kWarps * j;
    m[j] = -INFINITY;
    l[j] = 0.0f;
    row_position[j] = r < rows ? step.positions[first + r / group] : -1;
#pragma unroll
    for (int c = 0; c < kMaxChannelsPerLane; ++c) acc[j][c] = 0.0f;
  }

  const int vectors_per_key = d / 8;
  for (int tile = key_begin; tile < key_end; tile += kKeyTile) {
    __syncthreads();  // q_s written / the previous tile consumed
    for (int v = threadIdx.x; v < kKeyTile * vectors_per_key; v += blockDim.x) {
      const int key = v / vectors_per_key, c8 = (v % vectors_per_key) * 8;
      const int position = tile + key;
      uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
      if (position < key_end) {
        const int page = table[position / pool.page_size], slot = position % pool.page_size;
        kw = *reinterpret_cast<const uint4*>(pool.base + pool.offset(a.layer, page, 0, kv_head, slot) + c8);
        vw = *reinterpret_cast<const uint4*>(pool.base + pool.offset(a.layer, page, 1, kv_head, slot) + c8);
      }
      const uint16_t* kh = reinterpret_cast<const uint16_t*>(&kw);
      const uint16_t* vh = reinterpret_cast<const uint16_t*>(&vw);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        k_s[key * (d + 1) + c8 + e] = bf16_to_float(kh[e]);
        v_s[key * d + c8 + e] = bf16_to_float(vh[e]);
      }
    }
    __syncthreads();

    float s[kRowsPerWarp];
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) s[j] = 0.0f;
    for (int c = 0; c < d; ++c) {
      const float k = k_s[lane * (d + 1) + c];
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) s[j] = fmaf(q_s[(warp + kWarps * j) * d + c], k, s[j]);
    }
    const int key_position = tile + lane;
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const bool visible = key_position < key_end && key_position <= row_position[j];
      s[j] = visible ? s[j] * a.scale : -INFINITY;
      const float m_new = fmaxf(m[j], warp_max(s[j]));
      if (m_new == -INFINITY) {  // nothing visible yet (warp-uniform)
        s[j] = 0.0f;
        continue;
      }
      const float correction = expf(m[j] - m_new);
      s[j] = visible ? expf(s[j] - m_new) : 0.0f;  // s becomes p
      l[j] = l[j] * correction + warp_sum(s[j]);
      m[j] = m_new;
#pragma unroll
      for (int c = 0; c < kMaxChannelsPerLane; ++c) acc[j][c] *= correction;
    }
    for (int key = 0; key < kKeyTile; ++key) {
      float v[kMaxChannelsPerLane];
#pragma unroll
      for (int c = 0; c < kMaxChannelsPerLane; ++c) v[c] = c < lanes_channels ? v_s[key * d + lane + 32 * c] : 0.0f;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const float p = __shfl_sync(0xffffffffu, s[j], key);
#pragma unroll
        for (int c = 0; c < kMaxChannelsPerLane; ++c) acc[j][c] = fmaf(p, v[c], acc[j][c]);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int r = warp + kWarps * j;
    if (r >= rows) continue;
    if (a.splits == 1) {
      const size_t token = size_t(first) + r / group;
      uint16_t* out = a.out + (token * a.q_heads + kv_head * group + r % group) * d;
      const float inv = 1.0f / l[j];
#pragma unroll
      for (int c = 0; c < kMaxChannelsPerLane; ++c)
        if (c < lanes_channels) out[lane + 32 * c] = bf16_from_float(acc[j][c] * inv);
    } else {
      const size_t block = (size_t(item) * gridDim.y + kv_head) * a.splits + split;
      float* partial = a.workspace + (block * kAttentionRows + r) * d;
#pragma unroll
      for (int c = 0; c < kMaxChannelsPerLane; ++c)
        if (c < lanes_channels) partial[lane + 32 * c] = acc[j][c];
      if (lane == 0) {
        float* ml = a.workspace + size_t(kMaxSplitBlocks) * kAttentionRows * d + (block * kAttentionRows + r) * 2;
        ml[0] = m[j];
        ml[1] = l[j];
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

}  // namespace

size_t attention_workspace_floats(int max_split_blocks, int head_dim) {
  return size_t(max_split_blocks) * kAttentionRows * (head_dim + 2);
}

void choose_attention_splits(AttentionArgs& args, int max_keys, int sm_count) {
  const int blocks = args.items * args.pool.kv_heads;
  args.splits = 1;
  args.keys_per_split = max_keys;
  if (blocks >= sm_count) return;
  int splits = std::min((2 * sm_count + blocks - 1) / blocks, (max_keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  splits = std::max(1, std::min(splits, kMaxSplitBlocks / blocks));
  if (splits == 1) return;
  args.keys_per_split = (max_keys + splits - 1) / splits;
  args.keys_per_split = (args.keys_per_split + kKeyTile - 1) / kKeyTile * kKeyTile;
  args.splits = (max_keys + args.keys_per_split - 1) / args.keys_per_split;
}

void paged_attention_bf16(const AttentionArgs& args, const StepMetadata& step, cudaStream_t stream) {
  const int d = args.pool.head_dim, kv_heads = args.pool.kv_heads;
  if (d % 32 != 0 || d > 32 * kMaxChannelsPerLane)
    fail("BF16 attention: head_dim ", d, " is not supported (a multiple of 32, at most 128)");
  if (args.q_heads % kv_heads != 0 || args.queries_per_item * (args.q_heads / kv_heads) > kAttentionRows)
    fail("BF16 attention: ", args.queries_per_item, " queries x GQA group ", args.q_heads / kv_heads,
         " exceed ", kAttentionRows, " rows per block");
  if (args.splits > 1 && (!args.workspace || size_t(args.items) * kv_heads * args.splits > size_t(kMaxSplitBlocks)))
    fail("BF16 attention: split-KV needs a workspace of ", kMaxSplitBlocks, " blocks");
  const size_t smem = shared_bytes(d);
  static bool attribute_set = false;  // one device per process
  if (!attribute_set) {
    FIREQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(shared_bytes(32 * kMaxChannelsPerLane))));
    attribute_set = true;
  }
  const dim3 grid(args.items, kv_heads, args.splits);
  attention_kernel<<<grid, kWarps * 32, smem, stream>>>(args, step);
  FIREQ_CUDA_CHECK_LAUNCH();
  if (args.splits > 1) {
    merge_splits_kernel<<<dim3(args.items, kv_heads), 256, 0, stream>>>(args, kv_heads, d);
    FIREQ_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace fireq::cuda_runtime
