// The memory plan: every byte the engine will allocate, decided from the shapes before any
// allocation, so that a model that does not fit fails at once with the numbers.
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "fireq/cuda_engine.h"
#include "fireq/error.h"
#include "fireq_path.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "plan_sizes.h"

namespace fireq {
namespace {

constexpr int64_t kReserveBytes = int64_t{768} << 20;  // CUDA context growth, cuBLASLt, cub

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); }

}  // namespace

namespace cuda_runtime {

int64_t weight_bytes(const LlamaConfig& c, const CudaModelFormat& format) {
  const int64_t h = c.hidden_size, qkv = c.q_dim() + 2 * int64_t{c.kv_dim()}, inter = c.intermediate_size;
  const int64_t embed = int64_t{c.vocab_size} * h * (c.tie_word_embeddings ? 1 : 2);
  const int64_t shared = embed * 2 + h * 4 + 3 * 256;  // embeddings, lm_head, final norm
  if (format.fireq) return shared + fireq_layer_weight_bytes(c, format.group_size);
  const int64_t per_layer_bf16 = qkv * h + h * c.q_dim() + 2 * inter * h + h * inter;
  const int64_t per_layer_f32 = 2 * h + (c.attention_bias ? qkv : 0);
  return c.num_hidden_layers * (per_layer_bf16 * 2 + per_layer_f32 * 4 + 7 * 256) + shared;
}

int pages_per_sequence(int max_context, int page_size) { return (max_context + page_size - 1) / page_size; }

int64_t metadata_ints(const CudaEngineOptions& o, int max_context) {
  const int64_t t = o.max_step_tokens, s = o.max_sequences;
  return 3 * t + (s + 1) + s + o.max_logit_rows + 2 * t + s * pages_per_sequence(max_context, o.page_size);
}

int64_t sampling_bytes_estimate(const LlamaConfig& c, const CudaEngineOptions& o) {
  return int64_t{o.max_sequences} * c.vocab_size * 24 + (int64_t{1} << 20);
}

int64_t activation_arena_bytes(const LlamaConfig& c, const CudaEngineOptions& o, int max_context,
                               const CudaModelFormat& format) {
  const int64_t t = o.max_step_tokens, h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim();
  const int64_t inter = c.intermediate_size;
  const int64_t logits = int64_t{o.max_logit_rows} * (c.vocab_size * 4 + h * 2);
  const int64_t rope = int64_t{max_context} * c.head_dim * 4;
  const int64_t sampling_state = int64_t{o.max_sequences} * 64 + 4096;  // RNG states, row options, tokens
  const int64_t alignment = 32 * 256;                                     // each buffer rounded up to 256 bytes
  const int64_t shared = logits + rope + metadata_ints(o, max_context) * 4 + sampling_state + alignment;
  if (format.fireq) return shared + t * h * 2 + fireq_activation_bytes(c, o, format.group_size);  // + BF16 residual
  const int64_t per_token = h * 4 + h * 2 + (q + 2 * kv) * 4 + q * 4 + q * 2 + 2 * inter * 4 + inter * 2;
  const int64_t attention = int64_t(attention_workspace_floats(kMaxSplitBlocks, c.head_dim)) * 4;
  return shared + t * per_token + attention;
}

int64_t kv_arena_bytes(const LlamaConfig& c, const CudaMemoryPlan& plan, const CudaModelFormat& format) {
  if (!format.fireq) return plan.kv_pages * plan.kv_bytes_per_page;
  return (plan.kv_pages + 1) * plan.kv_bytes_per_page + int64_t{c.num_hidden_layers} * 4 * 256;
}

int64_t activation_bytes(const LlamaConfig& c, const CudaEngineOptions& o, int max_context,
                         const CudaModelFormat& format) {
  const int64_t widest = std::max({int64_t{c.vocab_size}, 2 * int64_t{c.intermediate_size},
                                   c.q_dim() + 2 * int64_t{c.kv_dim()}, int64_t{c.hidden_size}});
  const int64_t gemm_tuning = int64_t{Bf16Gemm::kTunedTokens} * widest * 4;
  return activation_arena_bytes(c, o, max_context, format) + sampling_bytes_estimate(c, o) + kGemmWorkspaceBytes +
         gemm_tuning;
}

}  // namespace cuda_runtime

CudaMemoryPlan plan_cuda_memory(const LlamaConfig& config, const CudaEngineOptions& options,
                                int64_t gpu_free_bytes, int64_t gpu_total_bytes, const CudaModelFormat& format) {
  const int max_context = options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  if (max_context <= 0) fail("CUDA engine: max_context must be positive, got ", max_context);
  if (options.max_step_tokens < 1 || options.max_sequences < 1 || options.max_logit_rows < 1)
    fail("CUDA engine: max_step_tokens (", options.max_step_tokens, "), max_sequences (", options.max_sequences,
         ") and max_logit_rows (", options.max_logit_rows, ") must be positive");
  if (options.page_size < 16 || options.page_size % 16 != 0)
    fail("CUDA engine: page_size must be a positive multiple of 16, got ", options.page_size);
  CudaMemoryPlan plan;
  plan.page_size = options.page_size;
  plan.gpu_free_bytes = gpu_free_bytes;
  plan.gpu_total_bytes = gpu_total_bytes;
  plan.reserve_bytes = kReserveBytes;
  plan.fireq = format.fireq;
  plan.weight_bytes = cuda_runtime::weight_bytes(config, format);
  plan.activation_bytes = cuda_runtime::activation_bytes(config, options, max_context, format);
  // INT4 pages: head_dim / 2 bytes per (token, KV head) for K and for V, plus their BF16 scales.
  plan.kv_bytes_per_page = format.fireq ? cuda_runtime::fireq_kv_bytes_per_page(config, options.page_size)
                                        : int64_t{config.num_hidden_layers} * 2 * config.num_key_value_heads *
                                              options.page_size * config.head_dim * 2;
  // The FireQ path keeps one scratch page (and alignment) for the padded rows of decode graphs.
  const int64_t scratch = format.fireq ? plan.kv_bytes_per_page + int64_t{config.num_hidden_layers} * 4 * 256 : 0;
  const int64_t fixed = plan.weight_bytes + plan.activation_bytes + plan.reserve_bytes + scratch;
  if (fixed > gpu_free_bytes)
    fail("CUDA engine: the model does not fit the GPU: weights ", gib(plan.weight_bytes), " GiB + activations ",
         gib(plan.activation_bytes), " GiB (", options.max_step_tokens, " tokens per step) + reserve ",
         gib(plan.reserve_bytes), " GiB > ", gib(gpu_free_bytes), " GiB free of ", gib(gpu_total_bytes), " GiB");
  int64_t kv_budget = gpu_free_bytes - fixed;
  if (options.kv_cache_bytes > 0) kv_budget = std::min(kv_budget, options.kv_cache_bytes);
  const int64_t per_sequence = cuda_runtime::pages_per_sequence(max_context, options.page_size);
  plan.kv_pages = std::min(kv_budget / plan.kv_bytes_per_page, per_sequence * options.max_sequences);
  if (plan.kv_pages < per_sequence)
    fail("CUDA engine: the KV pool (", gib(kv_budget), " GiB available) holds ", plan.kv_pages * options.page_size,
         " tokens, fewer than one sequence of max_context ", max_context, " tokens (",
         gib(per_sequence * plan.kv_bytes_per_page), " GiB); lower max_context or max_step_tokens");
  return plan;
}

std::string CudaMemoryPlan::describe() const {
  char text[640];
  std::snprintf(text, sizeof text,
                "memory plan (%s path): weights %.2f GiB, activations %.2f GiB, KV pool %.2f GiB = %lld pages x %d tokens "
                "(%lld tokens, %.1f KiB/token), reserve %.2f GiB; GPU %.2f GiB free of %.2f GiB",
                fireq ? "FireQ W4A8, INT4 KV" : "BF16", gib(weight_bytes), gib(activation_bytes),
                gib(kv_pages * kv_bytes_per_page),
                static_cast<long long>(kv_pages), page_size, static_cast<long long>(kv_tokens()),
                kv_bytes_per_page / 1024.0 / page_size, gib(reserve_bytes), gib(gpu_free_bytes), gib(gpu_total_bytes));
  return text;
}

}  // namespace fireq
