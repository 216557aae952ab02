// The FireQ path's forward pass on the CPU, op for op through the kernels' CPU references
// (gemm_reference.h, attention.h): what the GPU computes up to the FP32 summation order of its
// GEMMs and attention, so a GPU run can be held to it tightly, and the CPU engine's simulation
// (which keeps the residual stream in FP32) can be compared with it to see what the GPU's own
// numerics cost.
#include <algorithm>
#include <cmath>

#include "fireq/cuda_engine.h"
#include "fireq/error.h"
#include "fireq/kernels/attention.h"
#include "fireq/kernels/gemm_reference.h"
#include "fireq/numerics.h"
#include "fireq_path.h"

namespace fireq {

using namespace cuda_runtime;

namespace {

gemm::Int4Weights int4_weights(StackedLinear&& s, int k, int group_size) {
  return {.n = s.n, .k = k, .group_size = group_size, .packed = std::move(s.packed), .scales = std::move(s.scales)};
}

// FP8 rows with zero columns up to the GEMM's (group-padded) K.
gemm::Fp8Activations padded(gemm::Fp8Activations a, int k_pad) {
  if (k_pad == a.k) return a;
  std::vector<uint8_t> values(size_t(a.m) * k_pad, 0);
  for (int r = 0; r < a.m; ++r)
    std::copy_n(a.values.begin() + size_t(r) * a.k, a.k, values.begin() + size_t(r) * k_pad);
  a.values = std::move(values);
  a.k = k_pad;
  return a;
}

std::vector<uint16_t> bf16_bits(const FloatTensor& t) {
  std::vector<uint16_t> out(t.data.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_from_float(t.data[i]);
  return out;
}

}  // namespace

std::vector<float> fireq_path_reference_logits(const QuantizedModel& model, std::span<const int32_t> tokens) {
  check_fireq_recipe(model);
  const LlamaConfig& c = model.config;
  const int n = static_cast<int>(tokens.size()), h = c.hidden_size, d = c.head_dim, g = model.recipe.group_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (n == 0) fail("fireq_path_reference_logits: no tokens");

  std::vector<uint16_t> residual(static_cast<size_t>(n) * h);
  for (int t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size) fail("fireq_path_reference_logits: token ", tokens[t], " out of range");
    for (int i = 0; i < h; ++i) residual[size_t(t) * h + i] = bf16_from_float(model.tok_embeddings.data[size_t(tokens[t]) * h + i]);
  }
  // One sequence in pages 0..pages-1.
  const int page_size = 16, pages = (n + page_size - 1) / page_size;
  const attention::PagedKvLayout layout{.num_pages = pages, .page_size = page_size, .kv_heads = c.num_key_value_heads,
                                        .head_dim = d};
  std::vector<uint8_t> k_data(layout.data_bytes()), v_data(layout.data_bytes());
  std::vector<uint16_t> k_scale(layout.scale_count()), v_scale(layout.scale_count());
  std::vector<int32_t> table(pages), positions(n), seq_index(n, 0), query_start = {0, n}, seq_lens = {n};
  for (int p = 0; p < pages; ++p) table[p] = p;
  for (int t = 0; t < n; ++t) positions[t] = t;
  const std::vector<float> rope = rope_cos_sin(c, n);
  const attention::PagedKvCache cache{.layout = layout, .k = k_data.data(), .v = v_data.data(), .k_scale = k_scale.data(),
                                      .v_scale = v_scale.data()};
  const attention::PagedSequences sequences{.batch = 1, .block_table = table.data(), .max_pages_per_seq = pages,
                                            .seq_lens = seq_lens.data()};
  std::vector<uint8_t> q_fp8(size_t(n) * c.q_dim());
  std::vector<uint16_t> q_scale(size_t(n) * c.num_attention_heads), attended(size_t(n) * c.q_dim());

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const QuantizedLayer& layer = model.layers[l];
    if (!layer.quantized) fail("model.layers.", l, ": a layer left in BF16 is not run by the FireQ path");
    const float* post_rope = layer.post_rope_scale.empty() ? nullptr : layer.post_rope_scale.data();
    StackedLinear qkv_stack = stacked_linear(model, l, {LinearSite::kQ, LinearSite::kK, LinearSite::kV}, g);
    const float qkv_s_inv = qkv_stack.s_inv;
    const int h_pad = padded_k(h, g), q_pad = padded_k(c.q_dim(), g), inter_pad = padded_k(c.intermediate_size, g);
    const gemm::Int4Weights wqkv = int4_weights(std::move(qkv_stack), h_pad, g);
    StackedLinear o_stack = stacked_linear(model, l, {LinearSite::kO}, g);
    const float o_s_inv = o_stack.s_inv;
    const gemm::Int4Weights wo = int4_weights(std::move(o_stack), q_pad, g);
    StackedLinear gate_up_stack = stacked_linear(model, l, {LinearSite::kGate, LinearSite::kUp}, g);
    const float gate_up_s_inv = gate_up_stack.s_inv;
    const gemm::Int4Weights wgu = int4_weights(std::move(gate_up_stack), h_pad, g);
    StackedLinear down_stack = stacked_linear(model, l, {LinearSite::kDown}, g);
    const float down_s_inv = down_stack.s_inv;
    const gemm::Int4Weights wdown = int4_weights(std::move(down_stack), inter_pad, g);

    const std::vector<uint16_t> attn_norm = bf16_bits(layer.attn_norm), ffn_norm = bf16_bits(layer.ffn_norm);
    const std::vector<uint16_t> qkv =
        gemm::gemm_reference(padded(gemm::rmsnorm_fp8_reference(residual.data(), attn_norm.data(), n, h, eps), h_pad),
                             wqkv, qkv_s_inv, gemm::Epilogue::kBf16);
    const attention::QkvQuantizeArgs quantize{
        .qkv = qkv.data(), .tokens = n, .q_heads = c.num_attention_heads, .positions = positions.data(),
        .seq_index = seq_index.data(), .rope_cos_sin = rope.data(), .max_position = n, .post_rope_k_scale = post_rope,
        .q_fp8 = q_fp8.data(), .q_scale = q_scale.data(), .cache = cache, .sequences = sequences};
    attention::quantize_qkv_reference(quantize);
    const attention::PagedAttentionArgs attend{
        .q = q_fp8.data(), .q_scale = q_scale.data(), .query_start = query_start.data(), .q_heads = c.num_attention_heads,
        .max_query_len = n, .max_seq_len = n, .cache = cache, .sequences = sequences,
        .softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))), .out = attended.data()};
    attention::paged_attention_reference(attend, attention::PRounding::fp8_tile);
    residual = gemm::gemm_reference(padded(gemm::quantize_bf16_rows_reference(attended.data(), n, c.q_dim()), q_pad), wo,
                                    o_s_inv, gemm::Epilogue::kResidualAdd, residual.data());
    const std::vector<uint16_t> activated =
        gemm::gemm_reference(padded(gemm::rmsnorm_fp8_reference(residual.data(), ffn_norm.data(), n, h, eps), h_pad), wgu,
                             gate_up_s_inv, gemm::Epilogue::kSwiGlu);
    residual = gemm::gemm_reference(
        padded(gemm::quantize_bf16_rows_reference(activated.data(), n, c.intermediate_size), inter_pad), wdown, down_s_inv,
        gemm::Epilogue::kResidualAdd, residual.data());
  }

  // Final norm as the engine's kernel (sum of squares in double, BF16 out), BF16 lm_head, FP32 sums.
  const FloatTensor& head = model.lm_head.empty() ? model.tok_embeddings : model.lm_head;
  std::vector<float> normed(h), logits(size_t(n) * c.vocab_size);
  for (int t = 0; t < n; ++t) {
    double sum_squares = 0;
    for (int i = 0; i < h; ++i) sum_squares += double(bf16_to_float(residual[size_t(t) * h + i])) * bf16_to_float(residual[size_t(t) * h + i]);
    const float inv_rms = float(1.0 / std::sqrt(sum_squares / h + c.rms_norm_eps));
    for (int i = 0; i < h; ++i)
      normed[i] = round_to_bf16(model.final_norm.data[i] * (bf16_to_float(residual[size_t(t) * h + i]) * inv_rms));
    for (int v = 0; v < c.vocab_size; ++v) {
      float sum = 0;
      for (int i = 0; i < h; ++i) sum += normed[i] * round_to_bf16(head.data[size_t(v) * h + i]);
      logits[size_t(t) * c.vocab_size + v] = sum;
    }
  }
  return logits;
}

}  // namespace fireq
