// The CPU reference engine: a Llama forward pass in FP32 over LlamaWeights (HF layout), with a KV
// cache, batched prefill (one sgemm per linear over all tokens of a chunk) and incremental decode.
//
// It is the reference the quantizer and every CUDA kernel are checked against, so it is plain and
// follows Hugging Face transformers' LlamaForCausalLM step by step. Three seams let other parts
// change the numerics without touching the forward pass:
//   - every linear layer is a `Linear` (FP32 sgemm by default; the quantizer plugs in simulated
//     W4A8 numerics),
//   - an `AttentionNumerics` policy sees the queries after RoPE and the keys/values before they
//     enter the cache (identity by default; FP8 queries, INT4 K/V, post-RoPE scaling),
//   - an `Observer` sees the inputs of the linears and the keys before/after RoPE (calibration).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fireq/model.h"

namespace fireq {

// y[t][o] = sum_i x[t][i] * W[o][i] (+ bias[o]) for every token t; x is [tokens, in] and y is
// [tokens, out], both row-major and dense.
class Linear {
 public:
  Linear(int in_features, int out_features);
  virtual ~Linear() = default;
  virtual void forward(const float* x, int tokens, float* y) const = 0;
  int in_features() const { return in_; }
  int out_features() const { return out_; }

 private:
  int in_, out_;
};

// FP32 weight [out, in] (and an optional bias [out]) through cblas_sgemm. Refers to the tensors
// without copying them: they must outlive this object.
class FloatLinear final : public Linear {
 public:
  FloatLinear(const FloatTensor& weight, const FloatTensor* bias, const std::string& name);
  void forward(const float* x, int tokens, float* y) const override;

 private:
  const float* weight_;
  const float* bias_;  // null when there is none
};

// The linear layers of one decoder layer.
enum class LinearSite { kQ, kK, kV, kO, kGate, kUp, kDown };

// Where the observer is called, and what it is given (rows of `width` floats, one per token):
enum class ObserveSite {
  kQkvInput,     // attn_norm output, the input of q/k/v_proj            width hidden
  kOProjInput,   // attention output, the input of o_proj                width q_dim
  kGateUpInput,  // ffn_norm output, the input of gate/up_proj           width hidden
  kDownInput,    // silu(gate) * up, the input of down_proj              width intermediate
  kKeyPreRope,   // k_proj output (bias included) before RoPE            width kv_dim
  kKeyPostRope,  // keys after RoPE, before the attention numerics       width kv_dim
  kLayerOutput,  // the residual stream after the layer (its output)     width hidden
};
const char* observe_site_name(ObserveSite site);
using Observer =
    std::function<void(int layer, ObserveSite site, const float* rows, int tokens, int width)>;

// Changes q/k/v in place on their way into attention. The identity (this base class) is exact
// FP32; the quantizer derives FP8 queries, INT4 keys/values with per-token scales and post-RoPE
// channel scaling. Rows are tokens: q is [tokens, q_dim], k and v are [tokens, kv_dim], with head
// h in columns [h*head_dim, (h+1)*head_dim).
class AttentionNumerics {
 public:
  virtual ~AttentionNumerics() = default;
  virtual void queries(int layer, float* q, int tokens) const {}
  virtual void keys_values(int layer, float* k, float* v, int tokens) const {}
};

enum class LogitsFor { kNone, kLast, kAll };

// What `fireq generate` / `fireq ppl` drive: one sequence, fed tokens, returning logits. The CPU
// reference engine and the CUDA engine (cuda_engine.h) both implement it.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual const LlamaConfig& config() const = 0;
  virtual int max_context() const = 0;
  virtual void reset() = 0;
  virtual int position() const = 0;
  virtual std::vector<float> forward(std::span<const int32_t> tokens, LogitsFor which) = 0;
};

class CpuEngine final : public Engine {
 public:
  // `weights` must outlive the engine. The context is limited to max_context tokens
  // (0: config.max_position_embeddings).
  explicit CpuEngine(const LlamaWeights& weights, int max_context = 0);
  ~CpuEngine() override;
  CpuEngine(const CpuEngine&) = delete;
  CpuEngine& operator=(const CpuEngine&) = delete;

  const LlamaConfig& config() const override { return weights_.config; }
  const LlamaWeights& weights() const { return weights_; }
  int max_context() const override { return max_context_; }

  // Replaces one linear layer (its in/out features must match the one it replaces).
  void set_linear(int layer, LinearSite site, std::unique_ptr<Linear> linear);
  const Linear& linear(int layer, LinearSite site) const;
  void set_lm_head(std::unique_ptr<Linear> lm_head);
  void set_attention_numerics(std::shared_ptr<const AttentionNumerics> numerics);  // null: identity
  void set_observer(Observer observer);  // empty: none

  // Forgets every cached token: the next forward starts at position 0.
  void reset() override;
  int position() const override { return position_; }

  // Runs `tokens` at positions position() .. position()+n-1 (attending to everything cached
  // before them), appends their keys/values to the cache and returns the logits of the last token
  // ([vocab]), of every token ([n, vocab] row-major), or nothing.
  std::vector<float> forward(std::span<const int32_t> tokens, LogitsFor which) override;

 private:
  struct Layer;
  struct Scratch;
  void run_layer(int layer, int tokens, Scratch& s);
  void attention(int layer, int tokens, Scratch& s);

  const LlamaWeights& weights_;
  int max_context_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::unique_ptr<Linear> lm_head_;
  std::shared_ptr<const AttentionNumerics> numerics_;
  Observer observer_;
  std::vector<float> rope_inv_freq_;  // [head_dim / 2]
  int position_ = 0;
};

// The RoPE inverse frequencies of HF's LlamaRotaryEmbedding, including "llama3" rope_scaling.
std::vector<double> rope_inverse_frequencies(const LlamaConfig& config);

// ---------------------------------------------------------------------------------------------
// Perplexity, WikiText style: the token stream is cut into non-overlapping windows of seq_len
// tokens (a shorter tail is dropped), each window is evaluated from an empty cache, and the mean
// negative log-likelihood is taken over every predicted token (seq_len - 1 per window: the first
// token of a window has no context). No BOS is inserted.
struct PerplexityOptions {
  int seq_len = 2048;
  int max_windows = 0;   // 0: every full window
  int chunk = 512;       // tokens per forward call inside a window (bounds the logits' memory)
};

struct PerplexityProgress {
  int window = 0;         // 1-based, just finished
  int windows = 0;
  double window_nll = 0;  // mean NLL of this window
  double running_nll = 0; // mean NLL so far
  int64_t tokens_done = 0;
  double seconds = 0;     // since the start
};

struct PerplexityResult {
  double mean_nll = 0;
  double perplexity = 0;
  int windows = 0;
  int64_t predicted_tokens = 0;
  int64_t processed_tokens = 0;  // tokens run through the model
  double seconds = 0;
};

PerplexityResult evaluate_perplexity(Engine& engine, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options,
                                     const std::function<void(const PerplexityProgress&)>& progress = {});

// -log softmax(logits)[target], computed in double.
double token_nll(std::span<const float> logits, int32_t target);

// ---------------------------------------------------------------------------------------------
// BLAS threading and the machine's measured sgemm peak (GFLOP/s), for reporting efficiency.
void set_blas_threads(int threads);
int blas_threads();
double measure_sgemm_peak_gflops(int n = 2048, int repeats = 3);

}  // namespace fireq
