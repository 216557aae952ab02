// The GPU kernels' numerics on the CPU engine. What is simulated exactly, and what is not, is listed
// in docs/FORMAT.md ("Simulated numerics").
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "fireq/error.h"
#include "fireq/kernels/attention.h"
#include "fireq/numerics.h"
#include "fireq/quant.h"

namespace fireq {

namespace {

FloatTensor tensor_of(std::vector<int64_t> shape, std::vector<float> data) {
  FloatTensor t;
  t.shape = std::move(shape);
  t.data = std::move(data);
  return t;
}

FloatTensor effective_weight(const QuantizedLinear& linear) {
  if (!linear.is_int4) return linear.dense;
  std::vector<float> w = linear.int4.dequantize();
  const float inv = linear.int4.inv_tensor_scale();
  for (float& v : w) v *= inv;  // a power of two: exact
  return tensor_of({linear.int4.out_features, linear.int4.in_features}, std::move(w));
}

FloatTensor effective_bias(const QuantizedLinear& linear) {
  if (!linear.is_int4) return linear.dense_bias;
  if (linear.int4.bias.empty()) return {};
  std::vector<float> b = linear.int4.bias;
  const float inv = linear.int4.inv_tensor_scale();
  for (float& v : b) v *= inv;
  return tensor_of({static_cast<int64_t>(b.size())}, std::move(b));
}

// Replaces each row of x by its FP8 codes' values q (numerics.h's per-token rule) and returns the
// row scales: x ~ q * scale.
void fake_quantize_fp8_rows(float* x, int rows, int width, float* row_scales) {
  for (int r = 0; r < rows; ++r) {
    float* row = x + static_cast<size_t>(r) * width;
    float absmax = 0;
    for (int i = 0; i < width; ++i) absmax = std::max(absmax, std::fabs(row[i]));
    const float scale = fp8_token_scale(absmax);
    for (int i = 0; i < width; ++i) row[i] = fp8_e4m3_to_float(fp8_quantize_activation(row[i], scale));
    row_scales[r] = scale;
  }
}

}  // namespace

LlamaWeights simulation_weights(const QuantizedModel& model) {
  LlamaWeights w;
  w.config = model.config;
  w.tok_embeddings = model.tok_embeddings;
  w.final_norm = model.final_norm;
  w.lm_head = model.lm_head;
  w.source_description = "FireQ " + model.recipe.name + " (simulated numerics) of " + model.source_description;
  for (const QuantizedLayer& q : model.layers) {
    LlamaLayerWeights l;
    l.attn_norm = q.attn_norm;
    l.ffn_norm = q.ffn_norm;
    FloatTensor* matrices[kLinearsPerLayer] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down};
    for (int s = 0; s < kLinearsPerLayer; ++s) *matrices[s] = effective_weight(q.linears[s]);
    l.bq = effective_bias(q.linears[0]);
    l.bk = effective_bias(q.linears[1]);
    l.bv = effective_bias(q.linears[2]);
    w.layers.push_back(std::move(l));
  }
  return w;
}

SimulatedLinear::SimulatedLinear(const FloatTensor& weight, const FloatTensor* bias,
                                 ActivationDType activations, bool round_output_bf16,
                                 const std::string& name)
    : Linear(static_cast<int>(weight.cols()), static_cast<int>(weight.rows())),
      weight_(weight.data.data()),
      bias_(bias && !bias->empty() ? bias->data.data() : nullptr),
      activations_(activations),
      round_output_bf16_(round_output_bf16) {
  if (weight.shape.size() != 2 || weight.empty()) fail(name, ": weight must be a non-empty matrix");
  if (bias_ && bias->numel() != weight.rows())
    fail(name, ": bias has ", bias->numel(), " values, expected ", weight.rows());
}

void SimulatedLinear::forward(const float* x, int tokens, float* y) const {
  const int k = in_features(), n = out_features();
  std::vector<float> xq(x, x + static_cast<size_t>(tokens) * k);
  std::vector<float> row_scale(static_cast<size_t>(tokens), 1.0f);
  if (activations_ == ActivationDType::kFp8E4M3PerToken)
    fake_quantize_fp8_rows(xq.data(), tokens, k, row_scale.data());
  else
    for (float& v : xq) v = round_to_bf16(v);
  // q * sigma and the FP8 values are exact in float: only the accumulation order differs from the
  // GEMM's per-group FP32 partial sums (docs/kernels/GEMM.md).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, n, k, 1.0f, xq.data(), k, weight_, k,
              0.0f, y, n);
  for (int t = 0; t < tokens; ++t) {
    float* row = y + static_cast<size_t>(t) * n;
    for (int o = 0; o < n; ++o) {
      float v = row[o] * row_scale[t];
      if (bias_) v += bias_[o];
      row[o] = round_output_bf16_ ? round_to_bf16(v) : v;
    }
  }
}

FireqAttentionNumerics::FireqAttentionNumerics(const LlamaConfig& config,
                                               std::vector<LayerAttentionNumerics> layers)
    : q_heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      layers_(std::move(layers)) {
  for (size_t l = 0; l < layers_.size(); ++l)
    if (!layers_[l].post_rope_scale.empty() &&
        layers_[l].post_rope_scale.size() != static_cast<size_t>(kv_heads_ * head_dim_))
      fail("layer ", l, ": post-RoPE scale has ", layers_[l].post_rope_scale.size(), " values, expected ",
           kv_heads_ * head_dim_);
}

void FireqAttentionNumerics::queries(int layer, float* q, int tokens) const {
  if (layer >= static_cast<int>(layers_.size())) return;
  const LayerAttentionNumerics& L = layers_[layer];
  const int d = head_dim_, group = q_heads_ / kv_heads_;
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < q_heads_; ++h) {
      float* row = q + (static_cast<size_t>(t) * q_heads_ + h) * d;
      if (!L.post_rope_scale.empty()) {
        const float* s = L.post_rope_scale.data() + (h / group) * d;
        for (int c = 0; c < d; ++c) row[c] /= s[c];
      }
      if (L.fp8_queries) {
        float scale;
        fake_quantize_fp8_rows(row, 1, d, &scale);
        for (int c = 0; c < d; ++c) row[c] *= scale;
      }
    }
}

void FireqAttentionNumerics::keys_values(int layer, float* k, float* v, int tokens) const {
  if (layer >= static_cast<int>(layers_.size())) return;
  const LayerAttentionNumerics& L = layers_[layer];
  const int d = head_dim_;
  auto quantize_row = [&](float* row) {
    float absmax = 0;
    for (int c = 0; c < d; ++c) absmax = std::max(absmax, std::fabs(row[c]));
    const float scale = L.kv_scale_dtype == ScaleDType::kBf16 ? attention::kv_int4_scale_bf16(absmax)
                                                              : attention::kv_int4_scale_e4m3(absmax);
    for (int c = 0; c < d; ++c) row[c] = static_cast<float>(int4_quantize(row[c], scale)) * scale;
  };
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < kv_heads_; ++h) {
      float* krow = k + (static_cast<size_t>(t) * kv_heads_ + h) * d;
      float* vrow = v + (static_cast<size_t>(t) * kv_heads_ + h) * d;
      if (!L.post_rope_scale.empty())
        for (int c = 0; c < d; ++c) krow[c] *= L.post_rope_scale[h * d + c];
      if (L.int4_kv) {
        quantize_row(krow);
        quantize_row(vrow);
      }
    }
}

LayerAttentionNumerics layer_attention_numerics(const QuantizedLayer& layer, const QuantRecipe& recipe) {
  LayerAttentionNumerics n;
  if (!layer.quantized) return n;
  n.fp8_queries = recipe.fp8_queries;
  n.int4_kv = recipe.quantize_kv();
  n.kv_scale_dtype = recipe.kv_scale_dtype;
  n.post_rope_scale = layer.post_rope_scale;
  return n;
}

void install_simulated_layer(CpuEngine& engine, const LlamaWeights& sim_weights, int layer,
                             const QuantizedLayer& quantized, const QuantRecipe& recipe) {
  if (!quantized.quantized || !recipe.quantize_weights) return;  // FloatLinear on BF16 weights
  const LlamaLayerWeights& w = sim_weights.layers[layer];
  const FloatTensor* matrices[kLinearsPerLayer] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down};
  const FloatTensor* biases[kLinearsPerLayer] = {&w.bq, &w.bk, &w.bv, nullptr, nullptr, nullptr, nullptr};
  for (int s = 0; s < kLinearsPerLayer; ++s) {
    const auto site = static_cast<LinearSite>(s);
    const bool bf16_out = site == LinearSite::kQ || site == LinearSite::kK || site == LinearSite::kV;
    engine.set_linear(layer, site,
                      std::make_unique<SimulatedLinear>(*matrices[s], biases[s], recipe.activations, bf16_out,
                                                        "model.layers." + std::to_string(layer) + "." +
                                                            linear_hf_name(site)));
  }
}

EvaluationModel::EvaluationModel(const QuantizedModel& model, int max_context) { simulate(model, max_context); }

EvaluationModel::EvaluationModel(const std::filesystem::path& path, int max_context)
    : source_(path), fireq_checkpoint_(is_fireq_checkpoint(path)) {
  if (fireq_checkpoint_) {
    simulate(load_quantized_checkpoint(path), max_context);
    return;
  }
  weights_ = std::make_unique<LlamaWeights>(load_llama_weights(path));
  engine_ = std::make_unique<CpuEngine>(*weights_, max_context);
}

std::filesystem::path EvaluationModel::tokenizer_path() const {
  if (source_.empty()) fail("this model was not loaded from a path: it has no tokenizer");
  return fireq_checkpoint_ ? checkpoint_tokenizer_path(source_) : source_;
}

void EvaluationModel::simulate(const QuantizedModel& model, int max_context) {
  weights_ = std::make_unique<LlamaWeights>(simulation_weights(model));
  engine_ = std::make_unique<CpuEngine>(*weights_, max_context);
  std::vector<LayerAttentionNumerics> attention;
  for (size_t l = 0; l < model.layers.size(); ++l) {
    install_simulated_layer(*engine_, *weights_, static_cast<int>(l), model.layers[l], model.recipe);
    attention.push_back(layer_attention_numerics(model.layers[l], model.recipe));
  }
  engine_->set_attention_numerics(std::make_shared<FireqAttentionNumerics>(model.config, std::move(attention)));
}

std::filesystem::path checkpoint_tokenizer_path(const std::filesystem::path& dir) {
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.gguf"})
    if (std::filesystem::is_regular_file(dir / name)) return dir / name;
  fail(dir.string(), ": no tokenizer.json, tokenizer.model or tokenizer.gguf in the checkpoint");
}

}  // namespace fireq
