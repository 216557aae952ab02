// The FireQ post-training quantizer (FIREQ_METHOD.md §1-§3) and its checkpoint format
// (docs/FORMAT.md):
//   quantize_model      float LlamaWeights + recipe + calibration tokens -> QuantizedModel, block by
//                       block, each block calibrated on the output of the already-quantized ones;
//   save/load           the FireQ safetensors checkpoint (atomic, sharded when large);
//   simulation          the CPU reference engine with exactly the GPU kernels' numerics (W4A8 /
//                       W4A16 linears, FP8 queries, INT4 K/V, post-RoPE scaling) for `fireq ppl`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fireq/engine.h"
#include "fireq/model.h"
#include "fireq/quant_ops.h"
#include "fireq/quant_recipe.h"

namespace fireq {

// One linear layer as stored: INT4 (quantized layers) or dense BF16 (skipped layers, or a recipe
// that leaves the weights alone).
struct QuantizedLinear {
  bool is_int4 = false;
  Int4Linear int4;
  FloatTensor dense;       // [out, in], BF16 values
  FloatTensor dense_bias;  // [out] or empty
};

constexpr int kLinearsPerLayer = 7;  // LinearSite kQ .. kDown (engine.h)
const char* linear_hf_name(LinearSite site);  // "self_attn.q_proj", ..., "mlp.down_proj"

struct QuantizedLayer {
  bool quantized = false;  // false: in recipe.skip_layers (BF16 weights, unquantized cache)
  FloatTensor attn_norm, ffn_norm;  // smoothing folded in, BF16 values
  QuantizedLinear linears[kLinearsPerLayer];
  // FireQ's online post-RoPE scaling S: [kv_heads * head_dim] (1 off the chosen channels) and the
  // chosen channels [kv_heads * 2 * top_k]; empty when the recipe has no post-RoPE scaling.
  std::vector<float> post_rope_scale;
  std::vector<int32_t> post_rope_channels;
  // Calibration statistics: per input channel absmax of q/k/v (= attn_norm output), o_proj,
  // gate/up (= ffn_norm output) and down_proj inputs; empty when no calibration ran.
  std::vector<float> qkv_input_absmax, o_input_absmax, gate_up_input_absmax, down_input_absmax;

  QuantizedLinear& linear(LinearSite site) { return linears[static_cast<int>(site)]; }
  const QuantizedLinear& linear(LinearSite site) const { return linears[static_cast<int>(site)]; }
};

struct QuantizedModel {
  LlamaConfig config;
  QuantRecipe recipe;
  FloatTensor tok_embeddings, final_norm, lm_head;  // BF16 values; lm_head empty when tied
  std::vector<QuantizedLayer> layers;
  std::string source_description;
};

// ---------------------------------------------------------------------------------------------
// Quantization

using LogFn = std::function<void(const std::string&)>;

// `calibration` holds recipe.calib_samples windows of recipe.calib_seq_len tokens (row after row);
// it is used only when recipe.needs_calibration(). Progress (per layer, with an ETA) goes to `log`.
QuantizedModel quantize_model(const LlamaWeights& weights, const QuantRecipe& recipe,
                              std::span<const int32_t> calibration, const LogFn& log = {});

// The first samples * seq_len tokens of `tokens` (the calibration text, tokenized), or a clear
// error naming `source` when the text is too short.
std::vector<int32_t> calibration_windows(std::span<const int32_t> tokens, int samples, int seq_len,
                                         const std::string& source);

// ---------------------------------------------------------------------------------------------
// Checkpoint (docs/FORMAT.md)

constexpr int kFireqFormatVersion = 1;

struct SaveOptions {
  std::filesystem::path source;            // the model quantized (HF directory or .gguf file)
  uint64_t max_shard_bytes = 2ull << 30;   // larger checkpoints are sharded
};

// Writes `dir` atomically: everything goes into a temporary sibling directory that is renamed to
// `dir` at the end (an existing `dir` is refused). Returns the bytes written.
uint64_t save_quantized_checkpoint(const QuantizedModel& model, const std::filesystem::path& dir,
                                   const SaveOptions& options);

// True when `path` is a directory whose config.json has quantization_config.quant_method "fireq".
bool is_fireq_checkpoint(const std::filesystem::path& path);

// Reads and validates a FireQ checkpoint; errors name the file, tensor and problem.
QuantizedModel load_quantized_checkpoint(const std::filesystem::path& dir);

// The HF config.json fields of `config` (for a GGUF source, which has none).
std::string llama_config_json(const LlamaConfig& config);

// ---------------------------------------------------------------------------------------------
// Simulated numerics on the CPU engine

// Float weights for the engine: INT4 linears as the effective weight q * sigma / s_t (exact in
// float), everything else as stored. Must outlive the engine built over it.
LlamaWeights simulation_weights(const QuantizedModel& model);

// Per-token FP8 activations x INT4 weights (the W4A8 GEMM: docs/kernels/GEMM.md), or BF16
// activations (W4A16). `weight` is the effective weight from simulation_weights; it and `bias`
// must outlive the linear. round_output_bf16: the GEMM writes BF16 (q/k/v); gate/up/o/down feed
// fused epilogues (SwiGLU, residual add) that the engine computes in FP32.
class SimulatedLinear final : public Linear {
 public:
  SimulatedLinear(const FloatTensor& weight, const FloatTensor* bias, ActivationDType activations,
                  bool round_output_bf16, const std::string& name);
  void forward(const float* x, int tokens, float* y) const override;

 private:
  const float* weight_;
  const float* bias_;
  ActivationDType activations_;
  bool round_output_bf16_;
};

// FP8 queries per (token, head), INT4 K and V per (token, KV head) with FP8 or BF16 scales, and
// post-RoPE scaling (k x S, q / S before quantization) for the layers that have them.
struct LayerAttentionNumerics {
  bool fp8_queries = false;
  bool int4_kv = false;
  ScaleDType kv_scale_dtype = ScaleDType::kBf16;
  std::vector<float> post_rope_scale;  // [kv_heads * head_dim] or empty
};

class FireqAttentionNumerics final : public AttentionNumerics {
 public:
  FireqAttentionNumerics(const LlamaConfig& config, std::vector<LayerAttentionNumerics> layers);
  void queries(int layer, float* q, int tokens) const override;
  void keys_values(int layer, float* k, float* v, int tokens) const override;

 private:
  int q_heads_, kv_heads_, head_dim_;
  std::vector<LayerAttentionNumerics> layers_;  // layers beyond the end: identity
};

LayerAttentionNumerics layer_attention_numerics(const QuantizedLayer& layer, const QuantRecipe& recipe);

// Installs the simulated linears of layer `layer` on an engine built over simulation_weights.
void install_simulated_layer(CpuEngine& engine, const LlamaWeights& sim_weights, int layer,
                             const QuantizedLayer& quantized, const QuantRecipe& recipe);

// A model on the CPU engine for evaluation (`fireq ppl`): a FireQ checkpoint or QuantizedModel with
// the GPU kernels' numerics simulated, or any other model load_llama_weights reads, in FP32.
class EvaluationModel {
 public:
  explicit EvaluationModel(const QuantizedModel& model, int max_context = 0);
  explicit EvaluationModel(const std::filesystem::path& path, int max_context = 0);
  CpuEngine& engine() { return *engine_; }
  const LlamaWeights& weights() const { return *weights_; }
  // What to give load_tokenizer: the checkpoint's tokenizer file, or the model path itself.
  std::filesystem::path tokenizer_path() const;

 private:
  void simulate(const QuantizedModel& model, int max_context);
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<CpuEngine> engine_;
  std::filesystem::path source_;  // empty when built from a QuantizedModel
  bool fireq_checkpoint_ = false;
};

// The tokenizer file of a FireQ checkpoint directory (tokenizer.json, tokenizer.model or
// tokenizer.gguf); fails naming the directory when there is none.
std::filesystem::path checkpoint_tokenizer_path(const std::filesystem::path& dir);

}  // namespace fireq
