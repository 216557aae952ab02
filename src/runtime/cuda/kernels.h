// Launchers of the engine's own kernels (elementwise ops, paged BF16 attention, sampling; the FireQ
// path's glue: BF16 embedding gather and final norm, random INT4 weights).
// Device pointers throughout; every launcher checks its launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fireq::cuda_runtime {

// The paged BF16 KV pool of every layer: [layer][page][K, V][kv_head][slot][head_dim]. A page id
// names the same page in every layer, so a sequence's block table serves all layers.
struct KvPool {
  uint16_t* base = nullptr;
  int layers = 0;
  int num_pages = 0;
  int page_size = 0;
  int kv_heads = 0;
  int head_dim = 0;

  __host__ __device__ size_t head_page_elements() const { return size_t(page_size) * head_dim; }
  // Element offset of (layer, page, K=0/V=1, head, slot, channel 0).
  __host__ __device__ size_t offset(int layer, int page, int kv, int head, int slot) const {
    return ((((size_t(layer) * num_pages + page) * 2 + kv) * kv_heads + head) * page_size + slot) *
           head_dim;
  }
};

// Per-token and per-chunk metadata of one step (device arrays).
struct StepMetadata {
  const int32_t* token_ids = nullptr;     // [tokens]
  const int32_t* positions = nullptr;     // [tokens] position in its sequence
  const int32_t* token_chunk = nullptr;   // [tokens]
  const int32_t* block_table = nullptr;   // [chunks][table_stride] page ids
  int table_stride = 0;
  int tokens = 0;
};

void embed_tokens(const uint16_t* table, const int32_t* ids, int tokens, int hidden, float* residual,
                  cudaStream_t stream);
// The FireQ path's BF16 residual stream.
void embed_tokens(const uint16_t* table, const int32_t* ids, int tokens, int hidden, uint16_t* residual,
                  cudaStream_t stream);

// out[r] = bf16(gamma * x[rows[r]] / rms(x[rows[r]])) for r < count (rows == nullptr: r itself),
// the sum of squares in double as in the CPU reference.
void rms_norm_to_bf16(const float* x, const int32_t* rows, int count, int width, const float* gamma,
                      double eps, uint16_t* out, cudaStream_t stream);
void rms_norm_to_bf16(const uint16_t* x, const int32_t* rows, int count, int width, const float* gamma,
                      double eps, uint16_t* out, cudaStream_t stream);

// For every token: adds the q|k|v bias (when non-null), rotates q and k (rotate_half) with the
// (cos, sin) table row of its position, writes q as FP32 [tokens][q_heads][head_dim] and k, v as
// BF16 into the pool at the token's page and slot.
struct RopeCacheArgs {
  const float* qkv = nullptr;        // [tokens][(q_heads + 2 kv_heads) head_dim]
  const float* bias = nullptr;       // [(q_heads + 2 kv_heads) head_dim] or null
  const float* cos_sin = nullptr;    // [max_position][head_dim / 2][2]
  int q_heads = 0;
  float* q_out = nullptr;
  KvPool pool;
  int layer = 0;
};
void rope_and_write_cache(const RopeCacheArgs& args, const StepMetadata& step, cudaStream_t stream);

// out[t][i] = bf16(silu(gate_up[t][i]) * gate_up[t][inter + i]).
void swiglu_to_bf16(const float* gate_up, int tokens, int inter, uint16_t* out, cudaStream_t stream);

// Causal attention of a step's queries over the paged cache. A work item is up to rows_per_block /
// gqa_group consecutive queries of one chunk; each (item, kv head) is one block (times key splits).
constexpr int kAttentionRows = 64;  // most query rows (query x head of a GQA group) per block
// 8 rows per block when every chunk of the step fits (decode), else kAttentionRows.
int attention_rows_per_block(int longest_chunk, int gqa_group);
struct AttentionArgs {
  const float* q = nullptr;            // [tokens][q_heads][head_dim]
  uint16_t* out = nullptr;             // BF16 [tokens][q_heads][head_dim]
  KvPool pool;
  int layer = 0;
  int q_heads = 0;
  float scale = 0;
  const int32_t* item_first_token = nullptr;  // [items] token index of the item's first query
  const int32_t* item_queries = nullptr;      // [items]
  int items = 0;
  int rows_per_block = kAttentionRows;  // attention_rows_per_block(...)
  int queries_per_item = 0;
  int splits = 1;                      // key ranges per (item, head), merged by a second kernel
  int keys_per_split = 0;              // a multiple of the key tile
  float* workspace = nullptr;          // attention_workspace_floats(...) when splits > 1
};
// Splits so that small steps (decode) still fill the GPU.
void choose_attention_splits(AttentionArgs& args, int max_keys, int sm_count);
size_t attention_workspace_floats(int max_split_blocks, int head_dim);
constexpr int kMaxSplitBlocks = 2048;  // items x kv heads x splits when splitting
void paged_attention_bf16(const AttentionArgs& args, const StepMetadata& step, cudaStream_t stream);

// Uniform values in [offset - amplitude, offset + amplitude), a hash of (seed, index).
void fill_random_bf16(uint16_t* out, size_t count, uint64_t seed, float offset, float amplitude,
                      cudaStream_t stream);
// out[r][i] = in[r][i] for i < k, 0 for k <= i < k_pad: FP8 rows zero-padded to a GEMM's K.
void pad_rows(const uint8_t* in, int rows, int k, int k_pad, uint8_t* out, cudaStream_t stream);
// Packed INT4 bytes (numerics.h packing), both codes uniform in [-7, 7].
void fill_random_int4(uint8_t* packed, size_t bytes, uint64_t seed, cudaStream_t stream);
void fill_random_f32(float* out, size_t count, uint64_t seed, float offset, float amplitude,
                     cudaStream_t stream);

// ----- Sampling -----
struct RowSampling {
  int slot = 0;            // index into the RNG states
  double temperature = 0;  // 0: greedy
  int top_k = 0;
  double top_p = 1.0;
};
// Argmax of each row (ties to the lowest id); sets *nan_rows (counts) when a row holds a NaN.
void argmax_rows(const float* logits, int rows, int vocab, int32_t* out, int* nan_rows, cudaStream_t stream);
// Sorting workspace for `rows` rows of `vocab`: bytes to allocate.
size_t sampling_workspace_bytes(int rows, int vocab);
// Rows with temperature > 0: sorts each row (descending, ties by id), then draws as fireq::Sampler
// does, advancing rng_states[slot]. Greedy rows keep the argmax already in `out`.
void sample_rows(const float* logits, int rows, int vocab, const RowSampling* row_options,
                 uint64_t* rng_states, void* workspace, size_t workspace_bytes, int32_t* out,
                 cudaStream_t stream);

}  // namespace fireq::cuda_runtime
