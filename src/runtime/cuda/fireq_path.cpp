// The FireQ path's layers: checkpoint -> kernel layout at load, and the op sequence of one layer
//   rmsnorm_quantize_fp8 -> gemm_w4a8 qkv -> quantize_qkv (RoPE, post-RoPE scaling, FP8 Q, INT4 K/V
//   into the pages) -> split-KV / prefill attention -> FP8 rows -> o_proj + residual ->
//   rmsnorm_quantize_fp8 -> gate|up with SwiGLU -> FP8 rows -> down_proj + residual.
#include "fireq_path.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "kernels.h"

namespace fireq::cuda_runtime {

int padded_k(int k, int group_size) { return (k + group_size - 1) / group_size * group_size; }

namespace {

// The split-K workspace covers M up to this many tokens, more than the dispatch ever splits K for
// (small token tiles only, docs/kernels/GEMM.md); a larger M runs without split-K.
constexpr int kSplitKMaxTokens = 256;

int widest_input(const LlamaConfig& c) { return std::max({c.hidden_size, c.q_dim(), c.intermediate_size}); }
int widest_padded_input(const LlamaConfig& c, int group_size) {
  return std::max({padded_k(c.hidden_size, group_size), padded_k(c.q_dim(), group_size),
                   padded_k(c.intermediate_size, group_size)});
}
bool pads_k(const LlamaConfig& c, int group_size) {
  return padded_k(c.hidden_size, group_size) != c.hidden_size || padded_k(c.q_dim(), group_size) != c.q_dim() ||
         padded_k(c.intermediate_size, group_size) != c.intermediate_size;
}
int widest_output(const LlamaConfig& c) {
  return std::max({c.q_dim() + 2 * c.kv_dim(), 2 * c.intermediate_size, c.hidden_size});
}

size_t linear_bytes(int n, int k, int group_size) { return gemm::prepared_weight_bytes(n, k, group_size); }

attention::PagedKvLayout kv_layout(const LlamaConfig& c, int page_size, int64_t pages) {
  return {.num_pages = static_cast<int>(pages), .page_size = page_size, .kv_heads = c.num_key_value_heads,
          .head_dim = c.head_dim};
}

// The split-KV kernel's workspace grows with the number of sequences it splits over; the largest
// over every decode batch the engine can run and every context bucket (needs the device: the
// kernel's plan depends on the SM count).
size_t splitkv_workspace_bytes(const LlamaConfig& c, const CudaEngineOptions& o, int max_context) {
  static uint8_t placeholder;  // check_shapes wants non-null pointers; nothing is read here
  const auto* any = &placeholder;
  const int pages = (max_context + o.page_size - 1) / o.page_size;
  attention::PagedAttentionArgs args{};
  args.q = any;
  args.q_scale = reinterpret_cast<const uint16_t*>(any);
  args.query_start = reinterpret_cast<const int32_t*>(any);
  args.q_heads = c.num_attention_heads;
  args.max_query_len = 1;
  args.max_seq_len = max_context;
  args.cache = {.layout = kv_layout(c, o.page_size, pages), .k = &placeholder, .v = &placeholder,
                .k_scale = reinterpret_cast<uint16_t*>(&placeholder), .v_scale = reinterpret_cast<uint16_t*>(&placeholder)};
  args.sequences = {.batch = 1, .block_table = reinterpret_cast<const int32_t*>(any), .max_pages_per_seq = pages,
                    .seq_lens = reinterpret_cast<const int32_t*>(any)};
  args.softmax_scale = 1.0f;
  args.out = reinterpret_cast<uint16_t*>(&placeholder);
  std::vector<int> lengths;  // the decode graphs' length buckets, and the longest context
  for (int len = 16; len < max_context; len *= 2) lengths.push_back(len);
  lengths.push_back(max_context);
  size_t most = 0;
  for (int batch = 1; batch <= o.max_sequences; ++batch)
    for (const int len : lengths) {
      args.sequences.batch = batch;
      args.max_seq_len = len;
      most = std::max(most, attention::paged_attention_workspace_bytes(args));
    }
  return most;
}

// e4m3 code of sigma * 2^shift, exact, or fails naming the tensor (the shift would overflow 448).
uint8_t shifted_scale(uint8_t code, int shift, const std::string& tensor) {
  const float value = std::ldexp(fp8_e4m3_to_float(code), shift);
  const uint8_t shifted = fp8_e4m3_from_float(value);
  if (fp8_e4m3_to_float(shifted) != value)
    fail(tensor, ": its group scale ", fp8_e4m3_to_float(code), " times 2^", shift,
         " is not an e4m3 value; the stacked GEMM cannot share one tensor scale");
  return shifted;
}

}  // namespace

int64_t fireq_layer_weight_bytes(const LlamaConfig& c, int group_size) {
  const int h = c.hidden_size, inter = c.intermediate_size, g = group_size;
  const int h_pad = padded_k(h, g);
  const int64_t linears = linear_bytes(c.q_dim() + 2 * c.kv_dim(), h_pad, g) + linear_bytes(h, padded_k(c.q_dim(), g), g) +
                          linear_bytes(2 * inter, h_pad, g) + linear_bytes(h, padded_k(inter, g), g);
  const int64_t small = 2 * (int64_t{h} * 2 + 256) + int64_t{c.kv_dim()} * 4 + 256;  // norms, post-RoPE scale
  return c.num_hidden_layers * (linears + 4 * 256 + small);
}

int64_t fireq_kv_bytes_per_page(const LlamaConfig& c, int page_size) {
  const attention::PagedKvLayout layout = kv_layout(c, page_size, 1);
  return int64_t{c.num_hidden_layers} * 2 * (layout.data_bytes_per_page() + layout.scales_per_page() * 2);
}

int64_t fireq_activation_bytes(const LlamaConfig& c, const CudaEngineOptions& o, int group_size) {
  const int64_t t = o.max_step_tokens, q = c.q_dim(), kv = c.kv_dim();
  const int64_t fp8_rows = widest_padded_input(c, group_size) + (pads_k(c, group_size) ? widest_input(c) : 0);
  const int64_t per_token = fp8_rows + 4 + (q + 2 * kv) * 2 + q + c.num_attention_heads * 2 + q * 2 +
                            int64_t{c.intermediate_size} * 2;
  const int64_t splitk_tokens = std::min<int64_t>(t, kSplitKMaxTokens);
  const int64_t splitk = gemm::splitk_workspace_floats(splitk_tokens, widest_output(c)) * 4 +
                         gemm::splitk_counter_count(splitk_tokens, widest_output(c)) * 4;
  // The split-KV workspace, allocated beside the arena at construction: the kernel splits until
  // about 3 CTAs per SM of 8 query rows each (or one per sequence x KV head), each row keeping
  // head_dim + 2 floats; 256 SMs bound every Hopper part.
  const int64_t row_chunks = int64_t{o.max_sequences} * c.num_key_value_heads * ((c.gqa_group() + 7) / 8);
  const int64_t splitkv = std::max<int64_t>(row_chunks, 3 * 256) * 8 * (c.head_dim + 2) * 4;
  return t * per_token + splitk + splitkv + 12 * 256;
}

FireqLayers::FireqLayers(const LlamaConfig& config, const CudaEngineOptions& options, int max_context,
                         int group_size, int64_t kv_pages, DeviceArena& weights, DeviceArena& activations,
                         DeviceArena& kv)
    : config_(config), group_size_(group_size) {
  const LlamaConfig& c = config;
  const int h = c.hidden_size, inter = c.intermediate_size;
  if (group_size != 64 && group_size != 128) fail("CUDA engine: group size ", group_size, " is not 64 or 128");
  for (const auto& [what, n] : {std::pair{"q|k|v rows", c.q_dim() + 2 * c.kv_dim()}, {"hidden_size", h},
                                {"2 x intermediate_size", 2 * inter}})
    if (n % gemm::kTileRows != 0) fail("CUDA engine: ", what, " ", n, " is not a multiple of 64 (the GEMM's row tile)");
  if (c.attention_bias) fail("CUDA engine: q/k/v biases (", c.architecture, ") are not supported by the FireQ path");

  auto linear = [&](int n, int k, bool swiglu) {
    Linear l;
    l.weights = {.n = n, .k = k, .group_size = group_size, .swiglu_interleaved = swiglu};
    l.weights.data = weights.take<uint8_t>(linear_bytes(n, k, group_size), "INT4 linear");
    return l;
  };
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    Layer l;
    l.attn_norm = weights.take<uint16_t>(h, "attn_norm");
    l.ffn_norm = weights.take<uint16_t>(h, "ffn_norm");
    l.post_rope_scale = weights.take<float>(c.kv_dim(), "post-RoPE scale");
    // K padded to the group (docs/FORMAT.md zero_pad): the GEMM reads zero activation columns there.
    l.qkv = linear(c.q_dim() + 2 * c.kv_dim(), padded_k(h, group_size), false);
    l.o = linear(h, padded_k(c.q_dim(), group_size), false);
    l.gate_up = linear(2 * inter, padded_k(h, group_size), true);
    l.down = linear(h, padded_k(inter, group_size), false);
    layers_.push_back(l);
  }

  const int64_t t = options.max_step_tokens;
  x_fp8_ = activations.take<uint8_t>(t * widest_padded_input(c, group_size), "FP8 activations");
  if (pads_k(c, group_size)) x_unpadded_ = activations.take<uint8_t>(t * widest_input(c), "FP8 rows before padding");
  x_scales_ = activations.take<float>(t, "FP8 activation scales");
  qkv_ = activations.take<uint16_t>(t * (c.q_dim() + 2 * c.kv_dim()), "qkv");
  q_fp8_ = activations.take<uint8_t>(t * c.q_dim(), "FP8 queries");
  q_scale_ = activations.take<uint16_t>(t * c.num_attention_heads, "query scales");
  attended_ = activations.take<uint16_t>(t * c.q_dim(), "attention output");
  activated_ = activations.take<uint16_t>(t * inter, "SwiGLU output");
  if (const size_t workspace = splitkv_workspace_bytes(c, options, max_context); workspace > 0)
    FIREQ_CUDA_CHECK(cudaMalloc(&attention_workspace_, workspace));
  const int splitk_tokens = static_cast<int>(std::min<int64_t>(t, kSplitKMaxTokens));
  splitk_.partial_floats = gemm::splitk_workspace_floats(splitk_tokens, widest_output(c));
  splitk_.counter_count = gemm::splitk_counter_count(splitk_tokens, widest_output(c));
  splitk_.partial = activations.take<float>(splitk_.partial_floats, "split-K partial sums");
  splitk_.counters = activations.take<int>(splitk_.counter_count, "split-K counters");
  FIREQ_CUDA_CHECK(cudaMemset(splitk_.partial, 0, splitk_.partial_floats * sizeof(float)));
  FIREQ_CUDA_CHECK(cudaMemset(splitk_.counters, 0, splitk_.counter_count * sizeof(int)));

  const attention::PagedKvLayout layout = kv_layout(c, options.page_size, kv_pages);
  attention::check_layout(layout);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    attention::PagedKvCache cache{.layout = layout};
    cache.k = kv.take<uint8_t>(layout.data_bytes(), "INT4 K pages");
    cache.v = kv.take<uint8_t>(layout.data_bytes(), "INT4 V pages");
    cache.k_scale = kv.take<uint16_t>(layout.scale_count(), "K scales");
    cache.v_scale = kv.take<uint16_t>(layout.scale_count(), "V scales");
    caches_.push_back(cache);
  }
}

FireqLayers::~FireqLayers() { cudaFree(attention_workspace_); }

// Canonical bytes of the largest linear (every layer has the same shapes): the staging buffer's size.
size_t FireqLayers::largest_linear_bytes() const {
  size_t most = 0;
  for (const Linear* l : {&layers_[0].qkv, &layers_[0].o, &layers_[0].gate_up, &layers_[0].down})
    most = std::max(most, size_t(l->weights.n) * l->weights.k / 2);
  return most;
}

StackedLinear stacked_linear(const QuantizedModel& model, int layer, std::initializer_list<LinearSite> sites,
                             int group_size) {
  const QuantizedLayer& q = model.layers[layer];
  int exponent = 0;
  for (const LinearSite site : sites) exponent = std::max(exponent, q.linear(site).int4.tensor_scale_exponent);
  StackedLinear out;
  out.s_inv = std::ldexp(1.0f, -exponent);
  for (const LinearSite site : sites) {
    const QuantizedLinear& linear = q.linear(site);
    const std::string name = "model.layers." + std::to_string(layer) + "." + linear_hf_name(site);
    if (!linear.is_int4) fail(name, ": BF16 weights (a skipped layer) are not supported by the FireQ path of the CUDA engine");
    const Int4Linear& w = linear.int4;
    if (w.scale_dtype != ScaleDType::kFp8E4M3) fail(name, ": BF16 group scales; the GEMM reads FP8 e4m3 scales");
    if (w.padded_in_features != padded_k(static_cast<int>(w.in_features), group_size))
      fail(name, ": K stored as ", w.padded_in_features, " for ", w.in_features, " inputs; expected the next multiple of ",
           group_size);
    if (w.group_size != group_size) fail(name, ": group size ", w.group_size, ", the engine was planned for ", group_size);
    if (!w.bias.empty()) fail(name, ": biases are not supported by the FireQ path");
    const int shift = exponent - w.tensor_scale_exponent;
    out.packed.insert(out.packed.end(), w.packed.begin(), w.packed.end());
    for (const uint8_t code : w.scales_fp8) out.scales.push_back(shift == 0 ? code : shifted_scale(code, shift, name));
    out.n += static_cast<int>(w.out_features);
  }
  return out;
}

std::vector<float> rope_cos_sin(const LlamaConfig& c, int positions) {
  std::vector<float> inv_freq;
  for (const double f : rope_inverse_frequencies(c)) inv_freq.push_back(static_cast<float>(f));
  std::vector<float> table(static_cast<size_t>(positions) * c.head_dim);
  for (int p = 0; p < positions; ++p)
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      const double angle = inv_freq[i] * static_cast<float>(p);
      table[(p * inv_freq.size() + i) * 2] = static_cast<float>(std::cos(angle));
      table[(p * inv_freq.size() + i) * 2 + 1] = static_cast<float>(std::sin(angle));
    }
  return table;
}

void check_fireq_recipe(const QuantizedModel& model) {
  const QuantRecipe& r = model.recipe;
  if (!r.quantize_weights || r.activations != ActivationDType::kFp8E4M3PerToken || !r.fp8_queries || !r.quantize_kv())
    fail("CUDA engine: the FireQ path runs W4A8 with FP8 queries and an INT4 KV cache; recipe '", r.name,
         "' has weights ", r.quantize_weights ? "int4" : "bf16", ", activations ",
         r.activations == ActivationDType::kBf16 ? "bf16" : "fp8", ", queries ", r.fp8_queries ? "fp8" : "bf16",
         ", KV ", r.kv_bits, " bits");
  if (r.kv_scale_dtype != ScaleDType::kBf16)
    fail("CUDA engine: recipe '", r.name, "' has FP8 K/V scales; the attention kernels use BF16 scales (kv_scale_dtype: bf16)");
}

void FireqLayers::load(const QuantizedModel& model, cudaStream_t stream) {
  const LlamaConfig& c = config_;
  check_fireq_recipe(model);
  if (static_cast<int>(model.layers.size()) != c.num_hidden_layers)
    fail("CUDA engine: the checkpoint has ", model.layers.size(), " layers, its config says ", c.num_hidden_layers);

  const int h = c.hidden_size;
  const size_t largest = largest_linear_bytes();
  uint8_t *packed = nullptr, *scales = nullptr;
  FIREQ_CUDA_CHECK(cudaMalloc(&packed, largest));
  FIREQ_CUDA_CHECK(cudaMalloc(&scales, largest / (group_size_ / 2)));
  auto put = [&](const StackedLinear& w, Linear& dst) {
    if (w.n != dst.weights.n) fail("CUDA engine: a stacked linear has ", w.n, " rows, expected ", dst.weights.n);
    FIREQ_CUDA_CHECK(cudaMemcpyAsync(packed, w.packed.data(), w.packed.size(), cudaMemcpyHostToDevice, stream));
    FIREQ_CUDA_CHECK(cudaMemcpyAsync(scales, w.scales.data(), w.scales.size(), cudaMemcpyHostToDevice, stream));
    gemm::prepare_weights(packed, scales, dst.weights, stream);
    dst.s_inv = w.s_inv;
    FIREQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host vectors go away
  };
  auto put_bf16 = [&](uint16_t* dst, const FloatTensor& t, int64_t count, const std::string& name) {
    if (static_cast<int64_t>(t.data.size()) != count) fail(name, " has ", t.data.size(), " values, expected ", count);
    std::vector<uint16_t> bits(t.data.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = bf16_from_float(t.data[i]);
    FIREQ_CUDA_CHECK(cudaMemcpy(dst, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
  };
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const QuantizedLayer& q = model.layers[l];
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    if (!q.quantized) fail(prefix, "*: a layer left in BF16 (skip_layers) is not supported by the FireQ path");
    Layer& dst = layers_[l];
    put_bf16(dst.attn_norm, q.attn_norm, h, prefix + "input_layernorm.weight");
    put_bf16(dst.ffn_norm, q.ffn_norm, h, prefix + "post_attention_layernorm.weight");
    std::vector<float> scale = q.post_rope_scale;
    if (scale.empty()) scale.assign(c.kv_dim(), 1.0f);
    if (static_cast<int>(scale.size()) != c.kv_dim())
      fail(prefix, "self_attn.post_rope_scale has ", scale.size(), " values, expected ", c.kv_dim());
    FIREQ_CUDA_CHECK(cudaMemcpy(dst.post_rope_scale, scale.data(), scale.size() * 4, cudaMemcpyHostToDevice));
    put(stacked_linear(model, l, {LinearSite::kQ, LinearSite::kK, LinearSite::kV}, group_size_), dst.qkv);
    put(stacked_linear(model, l, {LinearSite::kO}, group_size_), dst.o);
    put(stacked_linear(model, l, {LinearSite::kGate, LinearSite::kUp}, group_size_), dst.gate_up);
    put(stacked_linear(model, l, {LinearSite::kDown}, group_size_), dst.down);
  }
  cudaFree(packed);
  cudaFree(scales);
}

void FireqLayers::randomize(uint64_t seed, cudaStream_t stream) {
  const LlamaConfig& c = config_;
  const int h = c.hidden_size;
  // INT4 codes uniform in [-7, 7] have std 4.32: sigma = 0.02 / 4.32 gives weights of std 0.02.
  const uint8_t sigma = fp8_e4m3_from_float(0.02f / 4.32f);
  const size_t largest = largest_linear_bytes();
  uint8_t *packed = nullptr, *scales = nullptr;
  FIREQ_CUDA_CHECK(cudaMalloc(&packed, largest));
  FIREQ_CUDA_CHECK(cudaMalloc(&scales, largest / (group_size_ / 2)));
  uint64_t stream_id = seed * 7919 + 17;
  auto draw = [&](Linear& dst) {
    const size_t bytes = size_t(dst.weights.n) * dst.weights.k / 2;
    fill_random_int4(packed, bytes, ++stream_id, stream);
    FIREQ_CUDA_CHECK(cudaMemsetAsync(scales, sigma, bytes / (group_size_ / 2), stream));
    gemm::prepare_weights(packed, scales, dst.weights, stream);
    dst.s_inv = 1.0f;
  };
  for (Layer& l : layers_) {
    fill_random_bf16(l.attn_norm, h, ++stream_id, 1.0f, 0.1f, stream);
    fill_random_bf16(l.ffn_norm, h, ++stream_id, 1.0f, 0.1f, stream);
    fill_random_f32(l.post_rope_scale, c.kv_dim(), ++stream_id, 1.0f, 0.0f, stream);
    draw(l.qkv);
    draw(l.o);
    draw(l.gate_up);
    draw(l.down);
  }
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaFree(packed);
  cudaFree(scales);
}

// Decode sequences (one query each) through the split-KV kernel, the others through the FP8 wgmma
// prefill kernel; both read query_start as absolute token offsets, so the second launch starts at
// its first sequence's row of the metadata.
void FireqLayers::attention(const FireqStep& step, int layer, cudaStream_t stream) const {
  const LlamaConfig& c = config_;
  attention::PagedAttentionArgs args{};
  args.q = q_fp8_;
  args.q_scale = q_scale_;
  args.q_heads = c.num_attention_heads;
  args.cache = caches_[layer];
  args.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  args.out = attended_;
  args.sequences.max_pages_per_seq = step.table_stride;
  if (step.decode_sequences > 0) {
    args.query_start = step.query_start;
    args.max_query_len = 1;
    args.max_seq_len = step.decode_max_seq_len;
    args.sequences.batch = step.decode_sequences;
    args.sequences.block_table = step.block_table;
    args.sequences.seq_lens = step.seq_lens;
    attention::paged_attention_splitkv(args, attention_workspace_, stream);
  }
  const int prefill = step.sequences - step.decode_sequences;
  if (prefill > 0) {
    const int first = step.decode_sequences;
    args.query_start = step.query_start + first;
    args.max_query_len = step.prefill_max_query_len;
    args.max_seq_len = step.prefill_max_seq_len;
    args.sequences.batch = prefill;
    args.sequences.block_table = step.block_table + int64_t{first} * step.table_stride;
    args.sequences.seq_lens = step.seq_lens + first;
    attention::paged_attention_prefill_fp8(args, stream);
  }
}

void FireqLayers::forward(const FireqStep& step, const float* rope_cos_sin, int rope_positions, uint16_t* residual,
                          cudaStream_t stream, const Mark& mark) const {
  const LlamaConfig& c = config_;
  const int n = step.tokens, h = c.hidden_size, inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // Per-token FP8 rows (after RMSNorm when gamma is set) of the next GEMM's input, zero-padded to
  // its K when the checkpoint pads K to the group.
  auto to_fp8 = [&](const uint16_t* x, const uint16_t* gamma, int k) {
    const int k_pad = padded_k(k, group_size_);
    if (k_pad == k) {
      gemm::rmsnorm_quantize_fp8(x, gamma, n, k, eps, x_fp8_, x_scales_, stream);
      return;
    }
    gemm::rmsnorm_quantize_fp8(x, gamma, n, k, eps, x_unpadded_, x_scales_, stream);
    pad_rows(x_unpadded_, n, k, k_pad, x_fp8_, stream);
  };
  auto gemm = [&](const Linear& w, gemm::Epilogue epilogue, uint16_t* out) {
    const gemm::GemmArgs args{.x = x_fp8_, .x_scales = x_scales_, .m = n, .s_inv = w.s_inv, .epilogue = epilogue,
                              .residual = epilogue == gemm::Epilogue::kResidualAdd ? residual : nullptr, .out = out};
    gemm::gemm_w4a8(args, w.weights, splitk_, stream);
  };
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const Layer& w = layers_[l];
    to_fp8(residual, w.attn_norm, h);
    mark("rmsnorm + FP8");
    gemm(w.qkv, gemm::Epilogue::kBf16, qkv_);
    mark("qkv_proj (W4A8)");
    attention::QkvQuantizeArgs qkv{.qkv = qkv_, .tokens = n, .q_heads = c.num_attention_heads,
                                   .positions = step.positions, .seq_index = step.token_sequence,
                                   .rope_cos_sin = rope_cos_sin, .max_position = rope_positions,
                                   .post_rope_k_scale = w.post_rope_scale, .q_fp8 = q_fp8_, .q_scale = q_scale_,
                                   .cache = caches_[l],
                                   .sequences = {.batch = step.sequences, .block_table = step.block_table,
                                                 .max_pages_per_seq = step.table_stride, .seq_lens = step.seq_lens}};
    attention::quantize_qkv(qkv, stream);
    mark("RoPE + FP8 Q + INT4 KV write");
    attention(step, l, stream);
    mark("attention (INT4 KV)");
    to_fp8(attended_, nullptr, c.q_dim());
    mark("FP8 quantize");
    gemm(w.o, gemm::Epilogue::kResidualAdd, residual);
    mark("o_proj + residual (W4A8)");
    to_fp8(residual, w.ffn_norm, h);
    mark("rmsnorm + FP8");
    gemm(w.gate_up, gemm::Epilogue::kSwiGlu, activated_);
    mark("gate|up + SwiGLU (W4A8)");
    to_fp8(activated_, nullptr, inter);
    mark("FP8 quantize");
    gemm(w.down, gemm::Epilogue::kResidualAdd, residual);
    mark("down_proj + residual (W4A8)");
  }
}

}  // namespace fireq::cuda_runtime
