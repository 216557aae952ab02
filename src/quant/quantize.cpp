// The quantization pipeline: per block, fold the weight-only transformations (v_mul, smoothing),
// calibrate the RoPE scaling on the block's input as produced by the already-quantized blocks
// before it, fold the pre-RoPE scales, search s_t and quantize to INT4, then run the quantized
// block (simulated numerics) to produce the next block's input.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/quant.h"

namespace fireq {

const char* linear_hf_name(LinearSite site) {
  switch (site) {
    case LinearSite::kQ: return "self_attn.q_proj";
    case LinearSite::kK: return "self_attn.k_proj";
    case LinearSite::kV: return "self_attn.v_proj";
    case LinearSite::kO: return "self_attn.o_proj";
    case LinearSite::kGate: return "mlp.gate_proj";
    case LinearSite::kUp: return "mlp.up_proj";
    case LinearSite::kDown: return "mlp.down_proj";
  }
  return "?";
}

std::vector<int32_t> calibration_windows(std::span<const int32_t> tokens, int samples, int seq_len,
                                         const std::string& source) {
  const int64_t needed = int64_t{samples} * seq_len;
  if (static_cast<int64_t>(tokens.size()) < needed)
    fail(source, ": ", tokens.size(), " tokens, calibration needs ", samples, " x ", seq_len, " = ", needed,
         " (lower calibration.samples or calibration.seq_len)");
  return {tokens.begin(), tokens.begin() + needed};
}

namespace {

std::vector<double> to_f64(const FloatTensor& t) { return {t.data.begin(), t.data.end()}; }

Matrix64 matrix_f64(const FloatTensor& t, const std::string& name) {
  if (t.shape.size() != 2) fail("tensor ", name, ": expected a matrix, got ", t.shape.size(), " dimensions");
  Matrix64 m(t.shape[0], t.shape[1]);
  std::copy(t.data.begin(), t.data.end(), m.data.begin());
  return m;
}

FloatTensor bf16_tensor(std::vector<int64_t> shape, const std::vector<double>& values) {
  FloatTensor t;
  t.shape = std::move(shape);
  t.data.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) t.data[i] = round_to_bf16(static_cast<float>(values[i]));
  return t;
}

FloatTensor bf16_copy(const FloatTensor& source) {
  FloatTensor t = source;
  for (float& v : t.data) v = round_to_bf16(v);
  return t;
}

FloatTensor float_tensor(const Matrix64& m) {
  FloatTensor t;
  t.shape = {m.rows, m.cols};
  t.data.assign(m.data.begin(), m.data.end());
  return t;
}

FloatTensor float_vector(const std::vector<double>& v) {
  FloatTensor t;
  if (v.empty()) return t;
  t.shape = {static_cast<int64_t>(v.size())};
  t.data.assign(v.begin(), v.end());
  return t;
}

void require_finite(const FloatTensor& t, const std::string& name) {
  for (size_t i = 0; i < t.data.size(); ++i)
    if (!std::isfinite(t.data[i])) fail("tensor ", name, ": non-finite value ", t.data[i], " at element ", i);
}

LayerF64 layer_f64(const LlamaLayerWeights& w, const std::string& prefix) {
  LayerF64 l;
  l.attn_norm = to_f64(w.attn_norm);
  l.ffn_norm = to_f64(w.ffn_norm);
  l.wq = matrix_f64(w.wq, prefix + "self_attn.q_proj.weight");
  l.wk = matrix_f64(w.wk, prefix + "self_attn.k_proj.weight");
  l.wv = matrix_f64(w.wv, prefix + "self_attn.v_proj.weight");
  l.wo = matrix_f64(w.wo, prefix + "self_attn.o_proj.weight");
  l.w_gate = matrix_f64(w.w_gate, prefix + "mlp.gate_proj.weight");
  l.w_up = matrix_f64(w.w_up, prefix + "mlp.up_proj.weight");
  l.w_down = matrix_f64(w.w_down, prefix + "mlp.down_proj.weight");
  l.bq = to_f64(w.bq);
  l.bk = to_f64(w.bk);
  l.bv = to_f64(w.bv);
  return l;
}

LlamaLayerWeights layer_f32(const LayerF64& l, const LlamaConfig& c) {
  LlamaLayerWeights w;
  w.attn_norm = bf16_tensor({c.hidden_size}, l.attn_norm);
  w.ffn_norm = bf16_tensor({c.hidden_size}, l.ffn_norm);
  w.wq = float_tensor(l.wq);
  w.wk = float_tensor(l.wk);
  w.wv = float_tensor(l.wv);
  w.wo = float_tensor(l.wo);
  w.w_gate = float_tensor(l.w_gate);
  w.w_up = float_tensor(l.w_up);
  w.w_down = float_tensor(l.w_down);
  w.bq = float_vector(l.bq);
  w.bk = float_vector(l.bk);
  w.bv = float_vector(l.bv);
  return w;
}

// Statistics of one block's activations over the calibration windows.
struct BlockStatistics {
  KeyStatistics keys;
  std::vector<float> qkv_input, o_input, gate_up_input, down_input;  // per-channel absmax

  BlockStatistics(const LlamaConfig& c) {
    keys.kv_heads = c.num_key_value_heads;
    keys.head_dim = c.head_dim;
    keys.pair_norm_max.assign(static_cast<size_t>(c.kv_dim() / 2), 0.0);
    keys.post_rope_absmax.assign(static_cast<size_t>(c.kv_dim()), 0.0);
  }

  void observe(ObserveSite site, const float* rows, int tokens, int width) {
    switch (site) {
      case ObserveSite::kQkvInput: return absmax_into(qkv_input, rows, tokens, width);
      case ObserveSite::kOProjInput: return absmax_into(o_input, rows, tokens, width);
      case ObserveSite::kGateUpInput: return absmax_into(gate_up_input, rows, tokens, width);
      case ObserveSite::kDownInput: return absmax_into(down_input, rows, tokens, width);
      case ObserveSite::kKeyPreRope: {
        const int d = keys.head_dim, half = d / 2;
        for (int t = 0; t < tokens; ++t)
          for (int h = 0; h < keys.kv_heads; ++h) {
            const float* k = rows + static_cast<size_t>(t) * width + h * d;
            for (int i = 0; i < half; ++i) {
              double& m = keys.pair_norm_max[h * half + i];
              m = std::max(m, std::hypot(static_cast<double>(k[i]), static_cast<double>(k[i + half])));
            }
          }
        return;
      }
      case ObserveSite::kLayerOutput: return;
      case ObserveSite::kKeyPostRope:
        for (int t = 0; t < tokens; ++t)
          for (int c = 0; c < width; ++c) {
            double& m = keys.post_rope_absmax[c];
            m = std::max(m, static_cast<double>(std::fabs(rows[static_cast<size_t>(t) * width + c])));
          }
        return;
    }
  }

  static void absmax_into(std::vector<float>& out, const float* rows, int tokens, int width) {
    out.resize(static_cast<size_t>(width), 0.0f);
    for (int t = 0; t < tokens; ++t)
      for (int c = 0; c < width; ++c) out[c] = std::max(out[c], std::fabs(rows[static_cast<size_t>(t) * width + c]));
  }
};

// Calibration runs one block at a time on the CPU engine: a one-block model whose embedding table
// is the block's input (one row per calibration token, the token ids are the row numbers), so the
// engine's own forward pass (RMSNorm, RoPE, attention over each window from position 0) runs on
// hidden states instead of tokens.
class BlockRunner {
 public:
  BlockRunner(const LlamaConfig& config, const QuantRecipe& recipe, int64_t tokens)
      : config_(config), recipe_(recipe), tokens_(tokens) {}

  // Runs `block` over `input` ([tokens][hidden]); `numerics` (or null) and `quantized` (or null)
  // give it the simulated quantized numerics. Calls `observer` for the block.
  void run(const std::vector<float>& input, LlamaLayerWeights block, const QuantizedLayer* quantized,
           const Observer& observer) const {
    LlamaWeights model;
    model.config = config_;
    model.config.num_hidden_layers = 1;
    model.config.vocab_size = static_cast<int>(tokens_);
    model.config.tie_word_embeddings = true;
    model.tok_embeddings.shape = {tokens_, config_.hidden_size};
    model.tok_embeddings.data = input;
    model.final_norm.shape = {config_.hidden_size};
    model.final_norm.data.assign(static_cast<size_t>(config_.hidden_size), 1.0f);
    model.layers.push_back(std::move(block));
    CpuEngine engine(model, recipe_.calib_seq_len);
    if (quantized) {
      install_simulated_layer(engine, model, 0, *quantized, recipe_);
      engine.set_attention_numerics(std::make_shared<FireqAttentionNumerics>(
          config_, std::vector<LayerAttentionNumerics>{layer_attention_numerics(*quantized, recipe_)}));
    }
    engine.set_observer(observer);
    std::vector<int32_t> ids(static_cast<size_t>(recipe_.calib_seq_len));
    for (int64_t start = 0; start < tokens_; start += recipe_.calib_seq_len) {
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(start + static_cast<int64_t>(i));
      engine.reset();
      engine.forward(ids, LogitsFor::kNone);
    }
  }

 private:
  const LlamaConfig& config_;
  const QuantRecipe& recipe_;
  int64_t tokens_;
};

// Statistics of block l's activations, its input coming from the quantized blocks before it.
BlockStatistics observe_block(const BlockRunner& runner, const std::vector<float>& input,
                              const LayerF64& layer, const LlamaConfig& c) {
  BlockStatistics stats(c);
  runner.run(input, layer_f32(layer, c), nullptr,
             [&](int, ObserveSite site, const float* rows, int tokens, int width) {
               stats.observe(site, rows, tokens, width);
             });
  return stats;
}

// The quantized block's output with the simulated numerics: the next block's input.
std::vector<float> quantized_block_output(const BlockRunner& runner, const std::vector<float>& input,
                                          const QuantizedLayer& q) {
  QuantizedModel one;
  one.layers.push_back(q);
  LlamaWeights effective = simulation_weights(one);
  std::vector<float> output;
  output.reserve(input.size());
  runner.run(input, std::move(effective.layers.front()), &q,
             [&](int, ObserveSite site, const float* rows, int tokens, int width) {
               if (site == ObserveSite::kLayerOutput)
                 output.insert(output.end(), rows, rows + static_cast<size_t>(tokens) * width);
             });
  return output;
}

QuantizedLinear quantize_linear(const Matrix64& w, const std::vector<double>& bias, bool int4,
                                const QuantRecipe& recipe, const std::string& name) {
  QuantizedLinear q;
  q.is_int4 = int4;
  if (int4) {
    q.int4 = quantize_int4_linear(w, bias.empty() ? nullptr : &bias, recipe, name);
  } else {
    for (size_t i = 0; i < w.data.size(); ++i)
      if (!std::isfinite(w.data[i])) fail("tensor ", name, ": non-finite value ", w.data[i], " at element ", i);
    q.dense = bf16_tensor({w.rows, w.cols}, w.data);
    if (!bias.empty()) q.dense_bias = bf16_tensor({w.rows}, bias);
  }
  return q;
}

void check_model(const LlamaWeights& weights, const QuantRecipe& recipe) {
  const LlamaConfig& c = weights.config;
  if (c.architecture != "llama" && c.architecture != "qwen2")
    fail("model: architecture '", c.architecture, "' is not supported (llama, qwen2)");
  if (static_cast<int>(weights.layers.size()) != c.num_hidden_layers)
    fail("model: ", weights.layers.size(), " layers, config says ", c.num_hidden_layers);
  for (const int l : recipe.skip_layers)
    if (l >= c.num_hidden_layers)
      fail("recipe skip_layers: layer ", l, " does not exist (the model has ", c.num_hidden_layers, ")");
  if (recipe.post_rope && recipe.post_rope_top_k > c.head_dim / 2)
    fail("recipe attention.post_rope.top_k = ", recipe.post_rope_top_k, " exceeds head_dim / 2 = ", c.head_dim / 2);
  require_finite(weights.tok_embeddings, "model.embed_tokens.weight");
  require_finite(weights.final_norm, "model.norm.weight");
  require_finite(weights.lm_head, "lm_head.weight");
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    require_finite(weights.layers[l].attn_norm, p + "input_layernorm.weight");
    require_finite(weights.layers[l].ffn_norm, p + "post_attention_layernorm.weight");
  }
}

std::string format_seconds(double s) {
  char buffer[32];
  if (s < 120) std::snprintf(buffer, sizeof buffer, "%.1f s", s);
  else std::snprintf(buffer, sizeof buffer, "%.1f min", s / 60);
  return buffer;
}

}  // namespace

QuantizedModel quantize_model(const LlamaWeights& weights, const QuantRecipe& recipe,
                              std::span<const int32_t> calibration, const LogFn& log) {
  check_model(weights, recipe);
  const LlamaConfig& c = weights.config;
  const bool calibrate = recipe.needs_calibration();
  if (calibrate && calibration.size() != static_cast<size_t>(recipe.calib_samples) * recipe.calib_seq_len)
    fail("quantize: ", calibration.size(), " calibration tokens given, the recipe asks for ",
         recipe.calib_samples, " x ", recipe.calib_seq_len);

  QuantizedModel out;
  out.config = c;
  out.recipe = recipe;
  out.source_description = weights.source_description;
  out.tok_embeddings = bf16_copy(weights.tok_embeddings);
  out.final_norm = bf16_copy(weights.final_norm);
  if (!weights.lm_head.empty()) out.lm_head = bf16_copy(weights.lm_head);

  // The calibration tokens' hidden states entering the current block.
  const BlockRunner runner(c, recipe, static_cast<int64_t>(calibration.size()));
  std::vector<float> hidden;
  if (calibrate) {
    hidden.reserve(calibration.size() * static_cast<size_t>(c.hidden_size));
    for (const int32_t id : calibration) {
      if (id < 0 || id >= c.vocab_size) fail("quantize: calibration token id ", id, " is outside the vocabulary");
      const float* row = out.tok_embeddings.data.data() + static_cast<size_t>(id) * c.hidden_size;
      hidden.insert(hidden.end(), row, row + c.hidden_size);
    }
  }

  const auto start = std::chrono::steady_clock::now();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string prefix_name = "model.layers." + std::to_string(l) + ".";
    QuantizedLayer q;
    q.quantized = !recipe.skips_layer(l);
    LayerF64 layer = layer_f64(weights.layers[l], prefix_name);
    if (q.quantized) apply_weight_transforms(layer, c, recipe);

    std::ostringstream line;
    if (calibrate && q.quantized) {
      BlockStatistics stats = observe_block(runner, hidden, layer, c);
      const RopeScaling rope = compute_rope_scaling(stats.keys, recipe);
      if (!rope.pre_rope.empty()) fold_pre_rope_scaling(layer, c, rope.pre_rope);
      q.post_rope_scale = rope.post_rope;
      q.post_rope_channels = rope.post_rope_channels;
      q.qkv_input_absmax = std::move(stats.qkv_input);
      q.o_input_absmax = std::move(stats.o_input);
      q.gate_up_input_absmax = std::move(stats.gate_up_input);
      q.down_input_absmax = std::move(stats.down_input);
      const double key_max = *std::max_element(stats.keys.post_rope_absmax.begin(), stats.keys.post_rope_absmax.end());
      line << " calibrated (max |k| " << key_max << ")";
    }

    q.attn_norm = bf16_tensor({c.hidden_size}, layer.attn_norm);
    q.ffn_norm = bf16_tensor({c.hidden_size}, layer.ffn_norm);
    const bool int4 = q.quantized && recipe.quantize_weights;
    const Matrix64* matrices[kLinearsPerLayer] = {&layer.wq, &layer.wk, &layer.wv, &layer.wo,
                                                  &layer.w_gate, &layer.w_up, &layer.w_down};
    const std::vector<double> none;
    const std::vector<double>* biases[kLinearsPerLayer] = {&layer.bq, &layer.bk, &layer.bv, &none, &none, &none, &none};
    int min_e = 99, max_e = -1;
    for (int s = 0; s < kLinearsPerLayer; ++s) {
      const std::string name = prefix_name + linear_hf_name(static_cast<LinearSite>(s)) + ".weight";
      q.linears[s] = quantize_linear(*matrices[s], *biases[s], int4, recipe, name);
      min_e = std::min(min_e, q.linears[s].int4.tensor_scale_exponent);
      max_e = std::max(max_e, q.linears[s].int4.tensor_scale_exponent);
    }
    if (int4 && recipe.per_tensor_scale) line << " s_t 2^" << min_e << "..2^" << max_e;
    if (!q.quantized) line << " skipped (BF16)";

    if (calibrate && l + 1 < c.num_hidden_layers) hidden = quantized_block_output(runner, hidden, q);
    out.layers.push_back(std::move(q));

    if (log) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double fraction = (l + 1.0) / c.num_hidden_layers;
      std::ostringstream msg;
      msg << "layer " << l + 1 << "/" << c.num_hidden_layers << ":" << line.str() << " ("
          << format_seconds(elapsed) << ", ETA " << format_seconds(elapsed / fraction - elapsed) << ")";
      log(msg.str());
    }
  }
  return out;
}

}  // namespace fireq
