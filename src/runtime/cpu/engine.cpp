// The Llama forward pass, following transformers' LlamaForCausalLM (eager attention) in FP32:
//   x = embed(tokens)
//   per layer: h = rmsnorm(x); q,k,v = proj(h); rope(q, k); x += o_proj(attention(q, k, v))
//              h = rmsnorm(x); x += down_proj(silu(gate_proj(h)) * up_proj(h))
//   logits = lm_head(rmsnorm(x))
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "fireq/engine.h"
#include "fireq/error.h"

namespace fireq {

struct CpuEngine::Layer {
  std::unique_ptr<Linear> linears[7];  // indexed by LinearSite
  std::vector<float> keys, values;     // the cache: [position, kv_dim] each
};

// Activations of one forward call, rows = tokens of the chunk.
struct CpuEngine::Scratch {
  int start = 0;                 // position of the chunk's first token
  std::vector<float> residual;   // [n, hidden]
  std::vector<float> normed;     // [n, hidden]
  std::vector<float> q;          // [n, q_dim]
  std::vector<float> k, v;       // [n, kv_dim]
  std::vector<float> attended;   // [n, q_dim]
  std::vector<float> projected;  // [n, hidden]
  std::vector<float> gate, up;   // [n, intermediate]
  std::vector<float> scores;     // [rows of one block, context]
  std::vector<float> cos, sin;   // [n, head_dim / 2]
};

namespace {

constexpr int kAttentionRowBlock = 128;  // query rows per causal block: limits masked work

// HF LlamaRMSNorm: y = gamma * (x / sqrt(mean(x^2) + eps)).
void rms_norm(const float* x, int rows, int width, const float* gamma, double eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<size_t>(r) * width;
    double sum_squares = 0;
    for (int i = 0; i < width; ++i) sum_squares += static_cast<double>(row[i]) * row[i];
    const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / width + eps));
    float* y = out + static_cast<size_t>(r) * width;
    for (int i = 0; i < width; ++i) y[i] = gamma[i] * (row[i] * inv_rms);
  }
}

// rotate_half RoPE on `heads` heads of each row: channel i pairs with i + d/2.
void apply_rope(float* rows, int tokens, int heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int t = 0; t < tokens; ++t) {
    const float* c = cos + static_cast<size_t>(t) * half;
    const float* s = sin + static_cast<size_t>(t) * half;
    for (int h = 0; h < heads; ++h) {
      float* x = rows + (static_cast<size_t>(t) * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

// Eight independent running maxima, so that the compiler can keep them in one vector register
// (a single running maximum is a serial dependency chain, and max_element is not vectorized).
float row_max(const float* x, int n) {
  constexpr int kLanes = 8;
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, x[0]);
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[j + l]);
  for (; j < n; ++j) lanes[0] = std::max(lanes[0], x[j]);
  return *std::max_element(lanes, lanes + kLanes);
}

// In place over the first `valid` entries; the rest (masked) become 0.
void softmax_prefix(float* row, int valid, int width) {
  const float max = row_max(row, valid);
  double sum = 0;
  for (int j = 0; j < valid; ++j) {
    row[j] = std::exp(row[j] - max);
    sum += row[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int j = 0; j < valid; ++j) row[j] *= inv;
  std::fill(row + valid, row + width, 0.0f);
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }

void add_into(float* x, const float* y, size_t count) {
  for (size_t i = 0; i < count; ++i) x[i] += y[i];
}

const char* linear_name(LinearSite site) {
  static const char* const kNames[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                       "gate_proj", "up_proj", "down_proj"};
  return kNames[static_cast<int>(site)];
}

void check_vector(const FloatTensor& t, int64_t size, const std::string& name) {
  if (t.numel() != size || static_cast<int64_t>(t.data.size()) != size)
    fail("model weights: ", name, " has ", t.data.size(), " values, expected ", size);
}

void validate_config(const LlamaConfig& c) {
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_hidden_layers <= 0 ||
      c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.head_dim <= 0 ||
      c.vocab_size <= 0)
    fail("model config: sizes must be positive (hidden ", c.hidden_size, ", intermediate ",
         c.intermediate_size, ", layers ", c.num_hidden_layers, ", heads ", c.num_attention_heads,
         ", kv heads ", c.num_key_value_heads, ", head_dim ", c.head_dim, ", vocab ", c.vocab_size, ")");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("model config: ", c.num_attention_heads, " attention heads are not a multiple of ",
         c.num_key_value_heads, " key/value heads");
  if (c.head_dim % 2 != 0) fail("model config: head_dim ", c.head_dim, " is odd (RoPE needs pairs)");
}

}  // namespace

const char* observe_site_name(ObserveSite site) {
  switch (site) {
    case ObserveSite::kQkvInput: return "qkv_input";
    case ObserveSite::kOProjInput: return "o_proj_input";
    case ObserveSite::kGateUpInput: return "gate_up_input";
    case ObserveSite::kDownInput: return "down_proj_input";
    case ObserveSite::kKeyPreRope: return "key_pre_rope";
    case ObserveSite::kKeyPostRope: return "key_post_rope";
    case ObserveSite::kLayerOutput: return "layer_output";
  }
  return "?";
}

std::vector<double> rope_inverse_frequencies(const LlamaConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i)
    inv_freq[i] = 1.0 / std::pow(config.rope_theta, 2.0 * i / config.head_dim);
  const RopeScalingLlama3& s = config.rope_scaling;
  if (!s.enabled) return inv_freq;
  // Llama 3.1: long wavelengths are slowed down by `factor`, short ones kept, the band between
  // the two thresholds interpolated.
  const double low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen > low_freq_wavelen) {
      f /= s.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv_freq;
}

CpuEngine::CpuEngine(const LlamaWeights& weights, int max_context)
    : weights_(weights),
      max_context_(max_context > 0 ? max_context : weights.config.max_position_embeddings) {
  const LlamaConfig& c = weights.config;
  validate_config(c);
  if (max_context_ <= 0) fail("model config: max_position_embeddings is ", max_context_);
  if (static_cast<int>(weights.layers.size()) != c.num_hidden_layers)
    fail("model weights: ", weights.layers.size(), " layers, config says ", c.num_hidden_layers);
  check_vector(weights.tok_embeddings, static_cast<int64_t>(c.vocab_size) * c.hidden_size,
               "token embeddings [vocab, hidden]");
  check_vector(weights.final_norm, c.hidden_size, "final norm");
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LlamaLayerWeights& w = weights.layers[l];
    const std::string prefix = "layer " + std::to_string(l) + " ";
    check_vector(w.attn_norm, c.hidden_size, prefix + "attn_norm");
    check_vector(w.ffn_norm, c.hidden_size, prefix + "ffn_norm");
    auto layer = std::make_unique<Layer>();
    const FloatTensor* biases[7] = {&w.bq, &w.bk, &w.bv, nullptr, nullptr, nullptr, nullptr};
    const FloatTensor* matrices[7] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down};
    const int expected_out[7] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.hidden_size,
                                 c.intermediate_size, c.intermediate_size, c.hidden_size};
    const int expected_in[7] = {c.hidden_size, c.hidden_size, c.hidden_size, c.q_dim(),
                                c.hidden_size, c.hidden_size, c.intermediate_size};
    for (int site = 0; site < 7; ++site) {
      const std::string name = prefix + linear_name(static_cast<LinearSite>(site));
      auto linear = std::make_unique<FloatLinear>(*matrices[site], biases[site], name);
      if (linear->out_features() != expected_out[site] || linear->in_features() != expected_in[site])
        fail("model weights: ", name, " is [", linear->out_features(), ", ", linear->in_features(),
             "], expected [", expected_out[site], ", ", expected_in[site], "]");
      layer->linears[site] = std::move(linear);
    }
    layers_.push_back(std::move(layer));
  }
  lm_head_ = std::make_unique<FloatLinear>(weights.output_weight(), nullptr, "lm_head");
  if (lm_head_->in_features() != c.hidden_size || lm_head_->out_features() != c.vocab_size)
    fail("model weights: lm_head is [", lm_head_->out_features(), ", ", lm_head_->in_features(),
         "], expected [", c.vocab_size, ", ", c.hidden_size, "]");
  for (const double f : rope_inverse_frequencies(c)) rope_inv_freq_.push_back(static_cast<float>(f));
}

CpuEngine::~CpuEngine() = default;

void CpuEngine::set_linear(int layer, LinearSite site, std::unique_ptr<Linear> linear) {
  if (layer < 0 || layer >= static_cast<int>(layers_.size()))
    fail("set_linear: layer ", layer, " out of range [0, ", layers_.size(), ")");
  if (!linear) fail("set_linear: layer ", layer, " ", linear_name(site), ": null linear");
  const Linear& old = *layers_[layer]->linears[static_cast<int>(site)];
  if (linear->in_features() != old.in_features() || linear->out_features() != old.out_features())
    fail("set_linear: layer ", layer, " ", linear_name(site), " is [", old.out_features(), ", ",
         old.in_features(), "], the replacement is [", linear->out_features(), ", ",
         linear->in_features(), "]");
  layers_[layer]->linears[static_cast<int>(site)] = std::move(linear);
}

const Linear& CpuEngine::linear(int layer, LinearSite site) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size()))
    fail("linear: layer ", layer, " out of range [0, ", layers_.size(), ")");
  return *layers_[layer]->linears[static_cast<int>(site)];
}

void CpuEngine::set_lm_head(std::unique_ptr<Linear> lm_head) {
  if (!lm_head || lm_head->in_features() != config().hidden_size ||
      lm_head->out_features() != config().vocab_size)
    fail("set_lm_head: expected a [", config().vocab_size, ", ", config().hidden_size, "] linear");
  lm_head_ = std::move(lm_head);
}

void CpuEngine::set_attention_numerics(std::shared_ptr<const AttentionNumerics> numerics) {
  numerics_ = std::move(numerics);
}

void CpuEngine::set_observer(Observer observer) { observer_ = std::move(observer); }

void CpuEngine::reset() {
  position_ = 0;
  for (auto& layer : layers_) {
    layer->keys.clear();
    layer->values.clear();
  }
}

std::vector<float> CpuEngine::forward(std::span<const int32_t> tokens, LogitsFor which) {
  const LlamaConfig& c = config();
  const int n = static_cast<int>(tokens.size());
  if (n == 0) fail("forward: no tokens given");
  if (static_cast<int64_t>(position_) + n > max_context_)
    fail("forward: ", position_, " cached + ", n, " new tokens exceed the context of ", max_context_,
         " tokens");
  const size_t hidden = c.hidden_size;
  // A call that threw half-way (bad token id, a failing Linear) may have cached some layers' keys:
  // drop them, so that the engine is as it was before that call.
  const size_t cached = static_cast<size_t>(position_) * c.kv_dim();
  for (auto& layer : layers_) {
    layer->keys.resize(cached);
    layer->values.resize(cached);
  }
  Scratch s;
  s.start = position_;
  s.residual.resize(n * hidden);
  for (int t = 0; t < n; ++t) {
    const int32_t id = tokens[t];
    if (id < 0 || id >= c.vocab_size)
      fail("forward: token id ", id, " at index ", t, " is outside the vocabulary [0, ", c.vocab_size, ")");
    const float* row = weights_.tok_embeddings.data.data() + id * hidden;
    std::copy(row, row + hidden, s.residual.begin() + t * hidden);
  }
  s.normed.resize(n * hidden);
  s.q.resize(static_cast<size_t>(n) * c.q_dim());
  s.k.resize(static_cast<size_t>(n) * c.kv_dim());
  s.v.resize(static_cast<size_t>(n) * c.kv_dim());
  s.attended.resize(static_cast<size_t>(n) * c.q_dim());
  s.projected.resize(n * hidden);
  s.gate.resize(static_cast<size_t>(n) * c.intermediate_size);
  s.up.resize(static_cast<size_t>(n) * c.intermediate_size);
  // HF computes the angle as float(inv_freq) * float(position) in float32; so do we.
  const size_t half = rope_inv_freq_.size();
  s.cos.resize(n * half);
  s.sin.resize(n * half);
  for (int t = 0; t < n; ++t)
    for (size_t i = 0; i < half; ++i) {
      const float angle = rope_inv_freq_[i] * static_cast<float>(s.start + t);
      s.cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      s.sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }

  for (int layer = 0; layer < c.num_hidden_layers; ++layer) run_layer(layer, n, s);
  position_ += n;

  if (which == LogitsFor::kNone) return {};
  const int rows = which == LogitsFor::kLast ? 1 : n;
  const float* last_rows = s.residual.data() + (n - rows) * hidden;
  rms_norm(last_rows, rows, c.hidden_size, weights_.final_norm.data.data(), c.rms_norm_eps,
           s.normed.data());
  std::vector<float> logits(static_cast<size_t>(rows) * c.vocab_size);
  lm_head_->forward(s.normed.data(), rows, logits.data());
  return logits;
}

void CpuEngine::run_layer(int layer, int n, Scratch& s) {
  const LlamaConfig& c = config();
  const LlamaLayerWeights& w = weights_.layers[layer];
  Layer& L = *layers_[layer];
  auto observe = [&](ObserveSite site, const float* rows, int width) {
    if (observer_) observer_(layer, site, rows, n, width);
  };
  auto run = [&](LinearSite site, const float* x, float* y) {
    L.linears[static_cast<int>(site)]->forward(x, n, y);
  };
  const size_t hidden = c.hidden_size;

  rms_norm(s.residual.data(), n, c.hidden_size, w.attn_norm.data.data(), c.rms_norm_eps, s.normed.data());
  observe(ObserveSite::kQkvInput, s.normed.data(), c.hidden_size);
  run(LinearSite::kQ, s.normed.data(), s.q.data());
  run(LinearSite::kK, s.normed.data(), s.k.data());
  run(LinearSite::kV, s.normed.data(), s.v.data());
  observe(ObserveSite::kKeyPreRope, s.k.data(), c.kv_dim());
  apply_rope(s.q.data(), n, c.num_attention_heads, c.head_dim, s.cos.data(), s.sin.data());
  apply_rope(s.k.data(), n, c.num_key_value_heads, c.head_dim, s.cos.data(), s.sin.data());
  observe(ObserveSite::kKeyPostRope, s.k.data(), c.kv_dim());
  if (numerics_) {
    numerics_->queries(layer, s.q.data(), n);
    numerics_->keys_values(layer, s.k.data(), s.v.data(), n);
  }
  L.keys.insert(L.keys.end(), s.k.begin(), s.k.end());
  L.values.insert(L.values.end(), s.v.begin(), s.v.end());
  attention(layer, n, s);
  observe(ObserveSite::kOProjInput, s.attended.data(), c.q_dim());
  run(LinearSite::kO, s.attended.data(), s.projected.data());
  add_into(s.residual.data(), s.projected.data(), n * hidden);

  rms_norm(s.residual.data(), n, c.hidden_size, w.ffn_norm.data.data(), c.rms_norm_eps, s.normed.data());
  observe(ObserveSite::kGateUpInput, s.normed.data(), c.hidden_size);
  run(LinearSite::kGate, s.normed.data(), s.gate.data());
  run(LinearSite::kUp, s.normed.data(), s.up.data());
  for (size_t i = 0; i < s.gate.size(); ++i) s.gate[i] = silu(s.gate[i]) * s.up[i];
  observe(ObserveSite::kDownInput, s.gate.data(), c.intermediate_size);
  run(LinearSite::kDown, s.gate.data(), s.projected.data());
  add_into(s.residual.data(), s.projected.data(), n * hidden);
  observe(ObserveSite::kLayerOutput, s.residual.data(), c.hidden_size);
}

// softmax(q kᵀ / sqrt(d) + causal mask) v per query head, against the cache (which already holds
// this chunk's keys and values). Query rows go in blocks so that keys no row of the block may see
// are not multiplied.
void CpuEngine::attention(int layer, int n, Scratch& s) {
  const LlamaConfig& c = config();
  const Layer& L = *layers_[layer];
  const int d = c.head_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int context = s.start + n;
  s.scores.resize(static_cast<size_t>(std::min(n, kAttentionRowBlock)) * context);
  for (int h = 0; h < c.num_attention_heads; ++h) {
    const int kv_head = h / c.gqa_group();
    const float* keys = L.keys.data() + kv_head * d;
    const float* values = L.values.data() + kv_head * d;
    for (int r0 = 0; r0 < n; r0 += kAttentionRowBlock) {
      const int rows = std::min(kAttentionRowBlock, n - r0);
      const int visible = s.start + r0 + rows;  // keys the block's last row may see
      const float* q = s.q.data() + static_cast<size_t>(r0) * q_dim + h * d;
      float* out = s.attended.data() + static_cast<size_t>(r0) * q_dim + h * d;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, visible, d, scale, q, q_dim, keys,
                  kv_dim, 0.0f, s.scores.data(), visible);
      for (int r = 0; r < rows; ++r)
        softmax_prefix(s.scores.data() + static_cast<size_t>(r) * visible, s.start + r0 + r + 1, visible);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, visible, 1.0f, s.scores.data(),
                  visible, values, kv_dim, 0.0f, out, q_dim);
    }
  }
}

}  // namespace fireq
