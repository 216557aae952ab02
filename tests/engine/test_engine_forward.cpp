// The CPU engine on small random models against a plain double-precision forward pass written
// here from the HF LlamaForCausalLM definition, plus the engine's seams (Linear, attention
// numerics, observer), incremental decode and perplexity.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "fireq/engine.h"
#include "fireq/error.h"

namespace fireq {
namespace {

using Matrix = std::vector<std::vector<double>>;  // [rows][cols]

struct Variant {
  bool llama3_rope = false;
  bool qwen2_bias = false;
  bool tied = true;
};

FloatTensor random_tensor(std::vector<int64_t> shape, double center, double spread, std::mt19937& rng) {
  FloatTensor t;
  t.shape = std::move(shape);
  std::uniform_real_distribution<double> u(-spread, spread);
  t.data.resize(t.numel());
  for (float& x : t.data) x = static_cast<float>(center + u(rng));
  return t;
}

LlamaWeights random_model(const Variant& variant, uint32_t seed) {
  std::mt19937 rng(seed);
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 97;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500.0;  // small theta: positions up to 64 still rotate every pair noticeably
  if (variant.llama3_rope) {
    c.rope_scaling = {.enabled = true, .factor = 8.0, .low_freq_factor = 1.0,
                      .high_freq_factor = 4.0, .original_max_position_embeddings = 32};
  }
  c.tie_word_embeddings = variant.tied;
  c.architecture = variant.qwen2_bias ? "qwen2" : "llama";
  c.attention_bias = variant.qwen2_bias;
  const int64_t h = c.hidden_size, i = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  auto linear = [&](int64_t out, int64_t in) { return random_tensor({out, in}, 0, 1.7 / std::sqrt(in), rng); };
  w.tok_embeddings = random_tensor({c.vocab_size, h}, 0, 1.0, rng);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = random_tensor({h}, 1.0, 0.3, rng);
    L.wq = linear(q, h);
    L.wk = linear(kv, h);
    L.wv = linear(kv, h);
    L.wo = linear(h, q);
    if (variant.qwen2_bias) {
      L.bq = random_tensor({q}, 0, 0.5, rng);
      L.bk = random_tensor({kv}, 0, 0.5, rng);
      L.bv = random_tensor({kv}, 0, 0.5, rng);
    }
    L.ffn_norm = random_tensor({h}, 1.0, 0.3, rng);
    L.w_gate = linear(i, h);
    L.w_up = linear(i, h);
    L.w_down = linear(h, i);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = random_tensor({h}, 1.0, 0.3, rng);
  if (!variant.tied) w.lm_head = linear(c.vocab_size, h);
  return w;
}

std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(rng);
  return t;
}

// ---- the double-precision reference ------------------------------------------------------------
Matrix matmul_t(const Matrix& x, const FloatTensor& w, const FloatTensor* bias = nullptr) {
  const int64_t out = w.shape[0], in = w.shape[1];
  Matrix y(x.size(), std::vector<double>(out));
  for (size_t t = 0; t < x.size(); ++t)
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias && !bias->empty() ? bias->data[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) acc += x[t][k] * w.data[o * in + k];
      y[t][o] = acc;
    }
  return y;
}

Matrix rmsnorm(const Matrix& x, const FloatTensor& gamma, double eps) {
  Matrix y = x;
  for (auto& row : y) {
    double ms = 0;
    for (double v : row) ms += v * v;
    ms /= row.size();
    for (size_t k = 0; k < row.size(); ++k) row[k] = gamma.data[k] * row[k] / std::sqrt(ms + eps);
  }
  return y;
}

std::vector<double> reference_inv_freq(const LlamaConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> f(half);
  for (int i = 0; i < half; ++i) f[i] = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
  if (!c.rope_scaling.enabled) return f;
  const auto& s = c.rope_scaling;
  for (double& x : f) {  // transformers' _compute_llama3_parameters, written as its torch.where
    const double wavelen = 2 * std::numbers::pi / x;
    const double low = s.original_max_position_embeddings / s.low_freq_factor;
    const double high = s.original_max_position_embeddings / s.high_freq_factor;
    double scaled = wavelen > low ? x / s.factor : x;
    const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                          (s.high_freq_factor - s.low_freq_factor);
    const bool medium = !(wavelen < high) && !(wavelen > low);
    if (medium) scaled = (1 - smooth) * scaled / s.factor + smooth * scaled;
    x = scaled;
  }
  return f;
}

void rope(Matrix& x, int heads, int d, const std::vector<double>& inv_freq) {
  for (size_t pos = 0; pos < x.size(); ++pos)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < d / 2; ++i) {
        const double angle = pos * inv_freq[i];
        double& a = x[pos][h * d + i];
        double& b = x[pos][h * d + i + d / 2];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = b0 * std::cos(angle) + a0 * std::sin(angle);
      }
}

// Logits [n][vocab] of every position of `tokens`, from scratch.
Matrix reference_forward(const LlamaWeights& w, const std::vector<int32_t>& tokens) {
  const LlamaConfig& c = w.config;
  const int n = tokens.size(), d = c.head_dim, hidden = c.hidden_size;
  Matrix x(n, std::vector<double>(hidden));
  for (int t = 0; t < n; ++t)
    for (int k = 0; k < hidden; ++k) x[t][k] = w.tok_embeddings.data[tokens[t] * hidden + k];
  const auto inv_freq = reference_inv_freq(c);
  for (const LlamaLayerWeights& L : w.layers) {
    Matrix h = rmsnorm(x, L.attn_norm, c.rms_norm_eps);
    Matrix q = matmul_t(h, L.wq, &L.bq), k = matmul_t(h, L.wk, &L.bk), v = matmul_t(h, L.wv, &L.bv);
    rope(q, c.num_attention_heads, d, inv_freq);
    rope(k, c.num_key_value_heads, d, inv_freq);
    Matrix att(n, std::vector<double>(c.q_dim(), 0.0));
    for (int head = 0; head < c.num_attention_heads; ++head) {
      const int kvh = head / (c.num_attention_heads / c.num_key_value_heads);
      for (int i = 0; i < n; ++i) {
        std::vector<double> p(i + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double s = 0;
          for (int e = 0; e < d; ++e) s += q[i][head * d + e] * k[j][kvh * d + e];
          p[j] = s / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, p[j]);
        }
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= i; ++j)
          for (int e = 0; e < d; ++e) att[i][head * d + e] += p[j] / sum * v[j][kvh * d + e];
      }
    }
    Matrix o = matmul_t(att, L.wo);
    for (int t = 0; t < n; ++t)
      for (int e = 0; e < hidden; ++e) x[t][e] += o[t][e];
    h = rmsnorm(x, L.ffn_norm, c.rms_norm_eps);
    Matrix g = matmul_t(h, L.w_gate), u = matmul_t(h, L.w_up);
    for (int t = 0; t < n; ++t)
      for (size_t e = 0; e < g[t].size(); ++e) g[t][e] = g[t][e] / (1 + std::exp(-g[t][e])) * u[t][e];
    Matrix down = matmul_t(g, L.w_down);
    for (int t = 0; t < n; ++t)
      for (int e = 0; e < hidden; ++e) x[t][e] += down[t][e];
  }
  return matmul_t(rmsnorm(x, w.final_norm, c.rms_norm_eps), w.output_weight());
}

// Max |a - b| relative to the largest |b|.
double max_relative_diff(const std::vector<float>& engine, const Matrix& reference, int first_row = 0) {
  double diff = 0, scale = 0;
  const size_t cols = reference[0].size();
  for (size_t r = first_row; r < reference.size(); ++r)
    for (size_t k = 0; k < cols; ++k) {
      diff = std::max(diff, std::abs(engine[(r - first_row) * cols + k] - reference[r][k]));
      scale = std::max(scale, std::abs(reference[r][k]));
    }
  EXPECT_GT(scale, 0.5) << "degenerate logits";
  return diff / scale;
}

class EngineVariants : public ::testing::TestWithParam<Variant> {};

TEST_P(EngineVariants, PrefillMatchesDoubleReference) {
  const LlamaWeights w = random_model(GetParam(), 11);
  const auto tokens = random_tokens(40, w.config.vocab_size, 5);
  CpuEngine engine(w);
  const auto logits = engine.forward(tokens, LogitsFor::kAll);
  ASSERT_EQ(logits.size(), tokens.size() * w.config.vocab_size);
  const double rel = max_relative_diff(logits, reference_forward(w, tokens));
  std::printf("  max |engine - double reference| / max |logit| = %.2e\n", rel);
  EXPECT_LT(rel, 2e-5);
}

TEST_P(EngineVariants, IncrementalDecodeMatchesPrefill) {
  const LlamaWeights w = random_model(GetParam(), 12);
  const auto tokens = random_tokens(30, w.config.vocab_size, 6);
  const Matrix reference = reference_forward(w, tokens);
  CpuEngine engine(w);
  // A prompt chunk, single tokens, then an uneven chunk: each call's logits are those positions'.
  const int cuts[] = {0, 7, 8, 9, 10, 23, 24, 30};
  for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
    const std::vector<int32_t> chunk(tokens.begin() + cuts[i], tokens.begin() + cuts[i + 1]);
    const auto logits = engine.forward(chunk, LogitsFor::kAll);
    Matrix rows(reference.begin() + cuts[i], reference.begin() + cuts[i + 1]);
    EXPECT_LT(max_relative_diff(logits, rows), 2e-5) << "chunk starting at " << cuts[i];
    EXPECT_EQ(engine.position(), cuts[i + 1]);
  }
}

INSTANTIATE_TEST_SUITE_P(Llama, EngineVariants,
                         ::testing::Values(Variant{}, Variant{.llama3_rope = true},
                                           Variant{.qwen2_bias = true, .tied = false}),
                         [](const auto& info) {
                           return info.param.llama3_rope ? "llama3_rope"
                                  : info.param.qwen2_bias ? "qwen2_untied"
                                                          : "llama_tied";
                         });

TEST(Engine, LastLogitsAreTheLastRowOfAll) {
  const LlamaWeights w = random_model({}, 13);
  const auto tokens = random_tokens(17, w.config.vocab_size, 7);
  CpuEngine engine(w);
  const auto all = engine.forward(tokens, LogitsFor::kAll);
  engine.reset();
  EXPECT_EQ(engine.position(), 0);
  const auto last = engine.forward(tokens, LogitsFor::kLast);
  ASSERT_EQ(last.size(), static_cast<size_t>(w.config.vocab_size));
  // One row goes through sgemv, many through sgemm: the same sums in another order.
  for (int k = 0; k < w.config.vocab_size; ++k)
    EXPECT_NEAR(last[k], all[(tokens.size() - 1) * w.config.vocab_size + k], 1e-5);
  engine.reset();
  EXPECT_TRUE(engine.forward(tokens, LogitsFor::kNone).empty());
  EXPECT_EQ(engine.position(), 17);
}

TEST(Engine, LlamaThreeScalingChangesOnlyLowFrequencies) {
  LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000;
  const auto plain = rope_inverse_frequencies(c);
  c.rope_scaling = {.enabled = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                    .original_max_position_embeddings = 8192};
  const auto scaled = rope_inverse_frequencies(c);
  const auto reference = reference_inv_freq(c);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_NEAR(scaled[i], reference[i], 1e-15 + 1e-12 * reference[i]);
  EXPECT_DOUBLE_EQ(scaled[0], plain[0]);                        // highest frequency kept
  EXPECT_DOUBLE_EQ(scaled.back(), plain.back() / 8);            // lowest divided by factor
}

// ---- seams ---------------------------------------------------------------------------------------
class DoublingLinear final : public Linear {
 public:
  DoublingLinear(const FloatTensor& w) : Linear(w.shape[1], w.shape[0]), inner_(w, nullptr, "test") {}
  void forward(const float* x, int tokens, float* y) const override {
    inner_.forward(x, tokens, y);
    for (int i = 0; i < tokens * out_features(); ++i) y[i] *= 2;
  }

 private:
  FloatLinear inner_;
};

TEST(Engine, ReplacedLinearIsUsed) {
  LlamaWeights w = random_model({}, 14);
  const auto tokens = random_tokens(12, w.config.vocab_size, 8);
  CpuEngine engine(w);
  engine.set_linear(1, LinearSite::kDown, std::make_unique<DoublingLinear>(w.layers[1].w_down));
  engine.set_linear(0, LinearSite::kK, std::make_unique<DoublingLinear>(w.layers[0].wk));
  const auto logits = engine.forward(tokens, LogitsFor::kAll);
  for (float& x : w.layers[1].w_down.data) x *= 2;
  for (float& x : w.layers[0].wk.data) x *= 2;
  EXPECT_LT(max_relative_diff(logits, reference_forward(w, tokens)), 2e-5);
  EXPECT_THROW(engine.set_linear(0, LinearSite::kQ, std::make_unique<DoublingLinear>(w.layers[0].wk)),
               Error);
  EXPECT_THROW(engine.set_linear(2, LinearSite::kQ, nullptr), Error);
}

// Throws on its first call, then behaves as the float layer.
class FailingOnceLinear final : public Linear {
 public:
  FailingOnceLinear(const FloatTensor& w) : Linear(w.shape[1], w.shape[0]), inner_(w, nullptr, "test") {}
  void forward(const float* x, int tokens, float* y) const override {
    if (!failed_) {
      failed_ = true;
      fail("simulated failure");
    }
    inner_.forward(x, tokens, y);
  }

 private:
  FloatLinear inner_;
  mutable bool failed_ = false;
};

TEST(Engine, FailedCallLeavesTheCacheAsItWas) {
  const LlamaWeights w = random_model({}, 20);
  const auto tokens = random_tokens(14, w.config.vocab_size, 12);
  CpuEngine engine(w);
  engine.forward(std::span(tokens).first(6), LogitsFor::kNone);
  engine.set_linear(1, LinearSite::kUp, std::make_unique<FailingOnceLinear>(w.layers[1].w_up));
  EXPECT_THROW(engine.forward(std::span(tokens).subspan(6, 4), LogitsFor::kAll), Error);  // layer 0 cached
  EXPECT_EQ(engine.position(), 6);
  const auto logits = engine.forward(std::span(tokens).subspan(6), LogitsFor::kAll);
  const Matrix reference = reference_forward(w, tokens);
  EXPECT_LT(max_relative_diff(logits, Matrix(reference.begin() + 6, reference.end())), 2e-5);
}

// Scales q by 2 and v by 0.5: the same as scaling W_q and W_v (RoPE is linear).
class ScalingNumerics final : public AttentionNumerics {
 public:
  mutable int query_calls = 0, kv_calls = 0;
  void queries(int layer, float* q, int tokens) const override {
    ++query_calls;
    for (int i = 0; i < tokens * 48; ++i) q[i] *= 2;
  }
  void keys_values(int layer, float* k, float* v, int tokens) const override {
    ++kv_calls;
    for (int i = 0; i < tokens * 16; ++i) v[i] *= 0.5f;
  }
};

TEST(Engine, AttentionNumericsPolicyIsApplied) {
  LlamaWeights w = random_model({}, 15);
  const auto tokens = random_tokens(20, w.config.vocab_size, 9);
  CpuEngine engine(w);
  auto numerics = std::make_shared<ScalingNumerics>();
  engine.set_attention_numerics(numerics);
  const auto prefill = engine.forward(std::span(tokens).first(19), LogitsFor::kAll);
  const auto decode = engine.forward(std::span(tokens).subspan(19), LogitsFor::kAll);
  EXPECT_EQ(numerics->query_calls, 4);
  EXPECT_EQ(numerics->kv_calls, 4);
  for (auto& L : w.layers) {
    for (float& x : L.wq.data) x *= 2;
    for (float& x : L.wv.data) x *= 0.5f;
  }
  const Matrix reference = reference_forward(w, tokens);
  EXPECT_LT(max_relative_diff(prefill, Matrix(reference.begin(), reference.end() - 1)), 2e-5);
  EXPECT_LT(max_relative_diff(decode, Matrix(reference.end() - 1, reference.end())), 2e-5);
}

TEST(Engine, ObserverSeesEverySiteWithItsShape) {
  const LlamaWeights w = random_model({}, 16);
  const auto tokens = random_tokens(9, w.config.vocab_size, 10);
  CpuEngine engine(w);
  std::map<std::pair<int, ObserveSite>, std::vector<float>> seen;
  engine.set_observer([&](int layer, ObserveSite site, const float* rows, int n, int width) {
    EXPECT_EQ(n, 9);
    const int expected = site == ObserveSite::kOProjInput  ? w.config.q_dim()
                         : site == ObserveSite::kDownInput ? w.config.intermediate_size
                         : site == ObserveSite::kKeyPreRope || site == ObserveSite::kKeyPostRope
                             ? w.config.kv_dim()
                             : w.config.hidden_size;
    EXPECT_EQ(width, expected) << observe_site_name(site);
    EXPECT_TRUE(seen.emplace(std::pair(layer, site), std::vector<float>(rows, rows + n * width)).second);
  });
  engine.forward(tokens, LogitsFor::kLast);
  EXPECT_EQ(seen.size(), 2u * 7u);
  // The pre-RoPE keys are k_proj of the qkv input; position 0 is not rotated, later ones are.
  const auto& x = seen[{1, ObserveSite::kQkvInput}];
  const auto& pre = seen[{1, ObserveSite::kKeyPreRope}];
  const auto& post = seen[{1, ObserveSite::kKeyPostRope}];
  const FloatTensor& wk = w.layers[1].wk;
  const int kv = w.config.kv_dim(), hidden = w.config.hidden_size;
  for (int t = 0; t < 9; ++t)
    for (int o = 0; o < kv; ++o) {
      double acc = 0;
      for (int k = 0; k < hidden; ++k) acc += x[t * hidden + k] * wk.data[o * hidden + k];
      EXPECT_NEAR(pre[t * kv + o], acc, 1e-4);
    }
  for (int o = 0; o < kv; ++o) EXPECT_FLOAT_EQ(post[o], pre[o]);
  double moved = 0;
  for (int o = kv; o < 9 * kv; ++o) moved += std::abs(post[o] - pre[o]);
  EXPECT_GT(moved, 1.0);
  // Layer 0's output is layer 1's input: rmsnorm of it is layer 1's qkv input.
  const auto& out0 = seen[{0, ObserveSite::kLayerOutput}];
  const FloatTensor& gamma = w.layers[1].attn_norm;
  for (int t = 0; t < 9; ++t) {
    double ms = 0;
    for (int k = 0; k < hidden; ++k) ms += double(out0[t * hidden + k]) * out0[t * hidden + k];
    const double inv_rms = 1 / std::sqrt(ms / hidden + w.config.rms_norm_eps);
    for (int k = 0; k < hidden; ++k)
      EXPECT_NEAR(x[t * hidden + k], gamma.data[k] * out0[t * hidden + k] * inv_rms, 1e-5);
  }
}

TEST(Engine, BadInputThrows) {
  const LlamaWeights w = random_model({}, 17);
  CpuEngine engine(w);
  EXPECT_THROW(engine.forward(std::vector<int32_t>{1, 97}, LogitsFor::kLast), Error);
  EXPECT_THROW(engine.forward(std::vector<int32_t>{-1}, LogitsFor::kLast), Error);
  EXPECT_THROW(engine.forward(std::vector<int32_t>{}, LogitsFor::kLast), Error);
  EXPECT_THROW(engine.forward(std::vector<int32_t>(65, 3), LogitsFor::kLast), Error);
  engine.reset();
  engine.forward(std::vector<int32_t>(60, 3), LogitsFor::kNone);
  EXPECT_THROW(engine.forward(std::vector<int32_t>(5, 3), LogitsFor::kLast), Error);

  LlamaWeights broken = random_model({}, 18);
  broken.layers[1].wv.shape = {8, 48};
  broken.layers[1].wv.data.resize(8 * 48);
  EXPECT_THROW(CpuEngine{broken}, Error);
  LlamaWeights short_layers = random_model({}, 18);
  short_layers.layers.pop_back();
  EXPECT_THROW(CpuEngine{short_layers}, Error);
}

// ---- perplexity ----------------------------------------------------------------------------------
TEST(Perplexity, MatchesReferenceNllOverWindows) {
  const LlamaWeights w = random_model({}, 19);
  const auto tokens = random_tokens(3 * 21 + 5, w.config.vocab_size, 11);  // tail of 5 dropped
  CpuEngine engine(w);
  double expected_sum = 0;
  for (int win = 0; win < 3; ++win) {
    const std::vector<int32_t> window(tokens.begin() + win * 21, tokens.begin() + (win + 1) * 21);
    const Matrix logits = reference_forward(w, window);
    for (int t = 0; t + 1 < 21; ++t) {
      double mx = -1e300, sum = 0;
      for (double l : logits[t]) mx = std::max(mx, l);
      for (double l : logits[t]) sum += std::exp(l - mx);
      expected_sum += std::log(sum) + mx - logits[t][window[t + 1]];
    }
  }
  int progress_calls = 0;
  const auto result = evaluate_perplexity(engine, tokens, {.seq_len = 21, .max_windows = 0, .chunk = 8},
                                          [&](const PerplexityProgress& p) {
                                            ++progress_calls;
                                            EXPECT_EQ(p.window, progress_calls);
                                            EXPECT_EQ(p.windows, 3);
                                          });
  EXPECT_EQ(progress_calls, 3);
  EXPECT_EQ(result.windows, 3);
  EXPECT_EQ(result.predicted_tokens, 60);
  EXPECT_NEAR(result.mean_nll, expected_sum / 60, 1e-5);
  EXPECT_NEAR(result.perplexity, std::exp(expected_sum / 60), 1e-4 * result.perplexity);
  EXPECT_GT(result.perplexity, 10.0);  // random model on random tokens: near the vocabulary size

  const auto two = evaluate_perplexity(engine, tokens, {.seq_len = 21, .max_windows = 2, .chunk = 21});
  EXPECT_EQ(two.windows, 2);
  EXPECT_THROW(evaluate_perplexity(engine, std::span(tokens).first(20), {.seq_len = 21}), Error);
  EXPECT_THROW(evaluate_perplexity(engine, tokens, {.seq_len = 65}), Error);
}

TEST(Perplexity, TokenNllIsLogSumExpMinusTarget) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 1000.0f};
  EXPECT_NEAR(token_nll(logits, 3), 0.0, 1e-12);
  const std::vector<float> small = {0.0f, std::log(3.0f)};
  EXPECT_NEAR(token_nll(small, 0), std::log(4.0), 1e-6);
  EXPECT_THROW(token_nll(small, 2), Error);
}

}  // namespace
}  // namespace fireq
