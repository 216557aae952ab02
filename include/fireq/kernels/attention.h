// Attention over a paged INT4 KV cache with FP8 queries (FireQ, ../docs/kernels/ATTENTION.md).
//
// One argument struct per operation, used by both the CPU reference (host pointers) and the CUDA
// launcher (device pointers), so a test fills it once and runs both.
//
// Paged KV cache, one layer: `num_pages` pages of `page_size` tokens. A sequence owns a list of
// pages (its row of the block table); token t of sequence b lives in page block_table[b][t /
// page_size] at slot t % page_size. Page p holds, for every KV head h:
//   K data  [h][slot][head_dim / 2] bytes: token-major, canonical INT4 packing (numerics.h: channel
//           2j in the low nibble of byte j, 2j+1 in the high nibble). This is the K-major "B operand"
//           of S = Q K^T: no transpose for an MMA.
//   V data  [h][channel][page_size / 2] bytes: channel-major, byte j of a channel row holds slot 2j
//           (low nibble) and 2j+1 (high nibble). This is V^T, the K-major operand of O = P V.
//   K scale [h][slot] BF16, V scale [h][slot] BF16: one symmetric INT4 scale per (token, KV head).
// Dequantized value = int4 * scale. A contiguous cache is one sequence whose block table is 0..n-1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fireq/config.h"
#include "fireq/numerics.h"

namespace fireq::attention {

// ---------------------------------------------------------------------------------------------
// Numerics of the cache (host and device).

// INT4 scale of one K or V row (a token's head_dim values of one KV head): bf16(absmax / 7), or 1
// for an all-zero row. BF16 rather than FP8 e4m3 by measured accuracy (docs/kernels/ATTENTION.md):
// an e4m3 scale underflows into its subnormal range for rows with absmax < 0.11.
FIREQ_HD float kv_int4_scale_bf16(float row_absmax) {
  return row_absmax > 0.0f ? round_to_bf16(row_absmax / 7.0f) : 1.0f;
}

// The alternative that was measured against it (reference only).
FIREQ_HD float kv_int4_scale_e4m3(float row_absmax) {
  return fp8_e4m3_to_float(int4_group_scale_e4m3(row_absmax));
}

// Page sizes are powers of two >= 16: kernels read 16-token chunks that must not cross pages, and
// find a token's page with a shift.
constexpr int kPageSizeMultiple = 16;

// ---------------------------------------------------------------------------------------------
// Layout.

struct PagedKvLayout {
  int num_pages = 0;
  int page_size = 0;  // tokens per page, a power of two >= kPageSizeMultiple
  int kv_heads = 0;
  int head_dim = 0;   // 64 or 128

  int64_t data_bytes_per_head_page() const { return int64_t{page_size} * head_dim / 2; }
  int64_t data_bytes_per_page() const { return data_bytes_per_head_page() * kv_heads; }
  int64_t scales_per_page() const { return int64_t{page_size} * kv_heads; }
  int64_t data_bytes() const { return data_bytes_per_page() * num_pages; }  // of K (V the same)
  int64_t scale_count() const { return scales_per_page() * num_pages; }      // of K (V the same)

  // Byte offsets into the K / V data arrays, element offsets into the scale arrays.
  FIREQ_HD int64_t k_row_offset(int page, int head, int slot) const {
    return ((int64_t{page} * kv_heads + head) * page_size + slot) * (head_dim / 2);
  }
  FIREQ_HD int64_t v_channel_offset(int page, int head, int channel) const {
    return ((int64_t{page} * kv_heads + head) * head_dim + channel) * (page_size / 2);
  }
  FIREQ_HD int64_t scale_offset(int page, int head, int slot) const {
    return (int64_t{page} * kv_heads + head) * page_size + slot;
  }
};

// Pointers into one layer's cache (host or device memory, as the caller uses it).
struct PagedKvCache {
  PagedKvLayout layout;
  uint8_t* k = nullptr;         // layout.data_bytes()
  uint8_t* v = nullptr;         // layout.data_bytes()
  uint16_t* k_scale = nullptr;  // layout.scale_count() BF16
  uint16_t* v_scale = nullptr;  // layout.scale_count() BF16
};

// The sequences of a batch and their pages.
struct PagedSequences {
  int batch = 0;
  const int32_t* block_table = nullptr;  // [batch][max_pages_per_seq] page ids
  int max_pages_per_seq = 0;
  const int32_t* seq_lens = nullptr;     // [batch] tokens in the cache (after this step's writes)
};

// ---------------------------------------------------------------------------------------------
// RoPE (rotate_half, Llama-3 rope_scaling) as a table of (cos, sin) per position and pair:
// [max_position][head_dim / 2][2] float, computed in double and rounded once, so that the CPU
// reference and the kernel rotate with the same numbers.
std::vector<float> rope_cos_sin_table(int head_dim, double theta, const RopeScalingLlama3& scaling,
                                      int max_position);

// ---------------------------------------------------------------------------------------------
// Fused RoPE + FireQ post-RoPE scaling + Q -> FP8 + K/V -> INT4 + paged cache write.
//
// For each token, query head and KV head: rotate q and k with the table row of its position;
// k_c *= post_rope_k_scale[h][c], q_c /= post_rope_k_scale[h / group][c] (FireQ's S: beta / M on
// the top-k channels and their RoPE partners, 1 elsewhere; nullptr = no scaling); q -> FP8 e4m3
// with a BF16 scale per (token, head) (numerics.h per-token activation rule); k, v -> INT4 with
// kv_int4_scale_bf16, written into the cache at the token's position. Rounding is fixed to the
// bit (explicit fma in the rotation), so the kernel matches the reference exactly.
struct QkvQuantizeArgs {
  const uint16_t* qkv = nullptr;        // BF16 [tokens][(q_heads + 2 * kv_heads) * head_dim]: q | k | v
  int tokens = 0;
  int q_heads = 0;
  const int32_t* positions = nullptr;   // [tokens] position in its sequence
  const int32_t* seq_index = nullptr;   // [tokens] sequence; a sequence's tokens are contiguous,
                                        // in increasing consecutive positions
  const float* rope_cos_sin = nullptr;  // rope_cos_sin_table(...)
  int max_position = 0;                 // rows of rope_cos_sin
  const float* post_rope_k_scale = nullptr;  // [kv_heads][head_dim] or nullptr
  uint8_t* q_fp8 = nullptr;             // [tokens][q_heads][head_dim]
  uint16_t* q_scale = nullptr;          // BF16 [tokens][q_heads]
  PagedKvCache cache;
  PagedSequences sequences;             // seq_lens unused here
};

// ---------------------------------------------------------------------------------------------
// Causal attention of new queries over the paged cache (decode: a few queries per sequence;
// chunked prefill: many, over a cached prefix plus themselves).
//
// Sequence b has q_len_b = query_start[b + 1] - query_start[b] queries, the last q_len_b tokens of
// its seq_lens[b] cached tokens; query i sits at position seq_lens[b] - q_len_b + i and attends
// cache positions <= its own. Query head j reads KV head j / (q_heads / kv_heads).
struct PagedAttentionArgs {
  const uint8_t* q = nullptr;           // FP8 e4m3 [total_queries][q_heads][head_dim]
  const uint16_t* q_scale = nullptr;    // BF16 [total_queries][q_heads]
  const int32_t* query_start = nullptr; // [batch + 1]
  int q_heads = 0;
  int max_query_len = 0;                // max over b of q_len_b (sizes the grid)
  int max_seq_len = 0;                  // max over b of seq_lens[b] (sizes the grid)
  PagedKvCache cache;
  PagedSequences sequences;
  float softmax_scale = 0.0f;           // usually 1 / sqrt(head_dim)
  uint16_t* out = nullptr;              // BF16 [total_queries][q_heads][head_dim]

  // Optional FP8 copy of the output, the o_proj GEMM's input (paged_attention_splitkv and
  // paged_attention_prefill_fp8): numerics.h's per-token activation rule over each token's
  // q_heads * head_dim BF16 outputs (scale = bf16(absmax / 448), codes e4m3(out / scale)). Written by
  // the same launch: the last writer of a group of tokens quantizes the group. `out` is still written
  // (the codes are computed from it). Costs more than a separate pass today (docs/kernels/ATTENTION.md).
  uint8_t* out_fp8 = nullptr;           // e4m3 [total_queries][q_heads][head_dim], or nullptr
  float* out_fp8_scale = nullptr;       // [total_queries]
  uint32_t* out_fp8_workspace = nullptr;  // fp8_output_workspace_words(*this) words, cleared by the launcher
  int total_queries = 0;                // query_start[batch]; needed with out_fp8
};

// Device words the FP8 output needs as workspace (2 per query token: absmax and a ticket).
inline int64_t fp8_output_workspace_words(const PagedAttentionArgs& args) { return 2 * int64_t{args.total_queries}; }

// How P = exp(S - max) is rounded before it meets V (see docs/kernels/ATTENTION.md):
//  fp16: P * v_scale[token] rounded to FP16, FP32 accumulation (the split-KV kernel, mma.sync f16);
//  fp8_tile: FireQ's FP8 path for wgmma: per KV tile of 128 tokens, P * v_scale / max_tile(v_scale)
//            * 448 rounded to e4m3, the tile's factor max(v_scale) / 448 applied to its FP32 sum.
enum class PRounding { fp16, fp8_tile };

// ---------------------------------------------------------------------------------------------
// Argument checks (throw fireq::Error naming the field). The *_metadata checks read the block
// table, lengths and positions, so they need host copies; the launchers check only shapes.
void check_layout(const PagedKvLayout& layout);
void check_shapes(const QkvQuantizeArgs& args);
void check_shapes(const PagedAttentionArgs& args);
void check_metadata(const QkvQuantizeArgs& host_args);
void check_metadata(const PagedAttentionArgs& host_args);

// ---------------------------------------------------------------------------------------------
// CPU references (host pointers). Both validate shapes and metadata first.
void quantize_qkv_reference(const QkvQuantizeArgs& args);
// Also writes out_fp8 / out_fp8_scale when out_fp8 is set (from its BF16 output; no workspace used).
void paged_attention_reference(const PagedAttentionArgs& args, PRounding rounding);

// Dequantized K and V rows of one cached token (head_dim floats each), for tests and tools.
void read_cached_token(const PagedKvCache& cache, const PagedSequences& sequences, int seq, int position,
                       int kv_head, float* k, float* v);

// Exact causal softmax attention in double over float inputs, no quantization: q [queries][q_heads]
// [d], k and v [seq_len][kv_heads][d] of one sequence whose last `queries` tokens are the queries.
// Output [queries][q_heads][d].
std::vector<double> attention_fp64(const float* q, const float* k, const float* v, int queries, int seq_len,
                                   int q_heads, int kv_heads, int head_dim, double softmax_scale);

// ---------------------------------------------------------------------------------------------
// CUDA launchers (device pointers; compiled only with CUDA). `stream` is a cudaStream_t.
size_t paged_attention_workspace_bytes(const PagedAttentionArgs& args);
void quantize_qkv(const QkvQuantizeArgs& args, void* stream);
// Split-KV attention with the PRounding::fp16 numerics; `workspace` holds
// paged_attention_workspace_bytes(args) bytes of device memory.
void paged_attention_splitkv(const PagedAttentionArgs& args, void* workspace, void* stream);
// Prefill (many queries per sequence, over a cached prefix plus themselves), FlashAttention-2 style on
// mma.sync with the same PRounding::fp16 numerics; no workspace. No FP8 output (throws if out_fp8 is set).
void paged_attention_prefill(const PagedAttentionArgs& args, void* stream);

// Prefill FlashAttention-3 style on Hopper (sm_90a): FP8 wgmma for Q K^T and P V, INT4 K/V converted
// to FP8 in shared memory by a producer warpgroup, two consumer warpgroups of 64 query rows; the
// PRounding::fp8_tile numerics. head_dim 64 or 128; no workspace. `pipeline` picks the consumer's
// schedule: three_stage (FireQ: Q K_i^T and P_{i-1} V_{i-1} in flight while softmax(S_i) runs) or
// serial (each step waits for the previous one; the baseline it is measured against).
enum class PrefillPipeline { serial, three_stage };
void paged_attention_prefill_fp8(const PagedAttentionArgs& args, void* stream,
                                 PrefillPipeline pipeline = PrefillPipeline::three_stage);

}  // namespace fireq::attention
