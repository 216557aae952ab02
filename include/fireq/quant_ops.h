// The arithmetic of FireQ's weight quantization and its exact float64 transformations
// (FIREQ_METHOD.md §1-§2): INT4 group quantization with FP8 e4m3 (or BF16) group scales, the
// per-tensor scale search, channel-wise smoothing, v_mul, and pre-/post-RoPE key scaling.
// Every rounding goes through include/fireq/numerics.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fireq/config.h"
#include "fireq/quant_recipe.h"

namespace fireq {

// A row-major float64 matrix [rows, cols]; a vector has cols == 1.
struct Matrix64 {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> data;

  Matrix64() = default;
  Matrix64(int64_t r, int64_t c) : rows(r), cols(c), data(static_cast<size_t>(r * c), 0.0) {}
  double* row(int64_t r) { return data.data() + r * cols; }
  const double* row(int64_t r) const { return data.data() + r * cols; }
  bool empty() const { return data.empty(); }
};

// ---------------------------------------------------------------------------------------------
// INT4 weights of one linear layer, as the checkpoint stores them and the GEMM consumes them.
struct Int4Linear {
  int64_t out_features = 0;         // N
  int64_t in_features = 0;          // K of the model
  int64_t padded_in_features = 0;   // K as stored: a multiple of group_size (zero columns added)
  int group_size = 128;
  ScaleDType scale_dtype = ScaleDType::kFp8E4M3;
  std::vector<uint8_t> packed;       // [N][padded_K / 2], canonical packing of numerics.h
  std::vector<uint8_t> scales_fp8;   // [N][padded_K / group_size] e4m3 codes (scale_dtype FP8)
  std::vector<uint16_t> scales_bf16; // [N][padded_K / group_size] bf16 bits (scale_dtype BF16)
  int tensor_scale_exponent = 0;     // s_t = 2^e; the GEMM multiplies its output by 1/s_t
  std::vector<float> bias;           // [N] x s_t, empty when the layer has none

  int64_t groups_per_row() const { return padded_in_features / group_size; }
  float inv_tensor_scale() const;
  float group_scale(int64_t row, int64_t group) const;
  // The weight the GEMM multiplies with, q * sigma (exact in float), [N][in_features] without the
  // padding; the output still has to be multiplied by inv_tensor_scale().
  std::vector<float> dequantize() const;
};

// Per-tensor scale s_t = 2^e, e in 0..14 (§1): over the candidates before the first that overflows
// (a group absmax x s_t > 448), the smallest underflow U (sum over groups of (w_min - g)/w_min for
// g < w_min), ties to the smaller s_t. `group_absmax` are the groups' absmax at s_t = 1. The
// published w_min = 7 * 2^-9 (sigma below e4m3's smallest subnormal); 7 * 2^-6 also keeps sigma out
// of e4m3's subnormal range, where it has fewer than 3 mantissa bits.
struct TensorScaleChoice {
  int exponent = 0;
  double underflow = 0;  // U at the chosen scale
  double underflow_at_one = 0;
};
constexpr double kInt4GroupMinAbsmax = 7.0 / 512.0;       // smallest absmax whose sigma is >= 2^-9
constexpr double kInt4GroupMinNormalAbsmax = 7.0 / 64.0;  // smallest absmax whose sigma is normal
TensorScaleChoice choose_tensor_scale(const std::vector<double>& group_absmax,
                                      double w_min = kInt4GroupMinAbsmax);

// Quantizes W [N][K] (float64, after every transformation) and its optional bias [N] to INT4:
// per-tensor scale (when the recipe asks), clamp to +-448, group scales, q = int4_quantize.
// `name` is used in error messages (non-finite weights, K not a multiple of the group).
Int4Linear quantize_int4_linear(const Matrix64& weight, const std::vector<double>* bias,
                                const QuantRecipe& recipe, const std::string& name);

// ---------------------------------------------------------------------------------------------
// One decoder layer in float64, HF layout (linear weights [out, in]).
struct LayerF64 {
  std::vector<double> attn_norm, ffn_norm;
  Matrix64 wq, wk, wv, wo, w_gate, w_up, w_down;
  std::vector<double> bq, bk, bv;  // empty unless the architecture has q/k/v biases
};

// Channel-wise smoothing scales for a consumer's input channels from its weights (stacked
// consumers share one set): type 2 c / mean_i |W_ij|, type 1 c / max_i |W_ij|, type 0 c.
// A column that is entirely zero gets 1.
std::vector<double> smoothing_scales(const std::vector<const Matrix64*>& consumers,
                                     const SmoothingPair& pair);

// Applies the recipe's weight-only transformations in place, each exact in float64:
// v_mul, then smoothing of the pairs qkv <- attn_norm, gate/up <- ffn_norm, down <- up rows,
// o <- v rows (the o-column scales averaged over the query heads that share a V row).
void apply_weight_transforms(LayerF64& layer, const LlamaConfig& config, const QuantRecipe& recipe);

// ---------------------------------------------------------------------------------------------
// RoPE-aware key scaling. Statistics come from calibration (per KV head h, channel c < head_dim):
//   pair_norm_max[h][i]  max over tokens of sqrt(k_i^2 + k_{i+d/2}^2), k_proj output before RoPE
//   post_rope_absmax[h][c]  max over tokens of |k_c| after RoPE
struct KeyStatistics {
  int kv_heads = 0;
  int head_dim = 0;
  std::vector<double> pair_norm_max;     // [kv_heads][head_dim / 2]
  std::vector<double> post_rope_absmax;  // [kv_heads][head_dim]
};

struct RopeScaling {
  std::vector<double> pre_rope;           // N, [kv_heads][head_dim]; 1 where off or covered by S
  std::vector<float> post_rope;           // S, [kv_heads][head_dim]; 1 outside the chosen pairs
  std::vector<int32_t> post_rope_channels;  // [kv_heads][2 * top_k], ascending per head
};

// Post-RoPE: per KV head the top_k RoPE pairs ranked by max(M_i, M_{i+d/2}) (the published rule,
// top_k channels plus their partners, except that two top channels of one pair do not shrink the
// set), S_c = beta / M_c on both channels. Pre-RoPE: N = alpha / pair_norm_max on the other pairs.
RopeScaling compute_rope_scaling(const KeyStatistics& stats, const QuantRecipe& recipe);

// Folds N into the layer: W_k (and b_k) rows x N, W_q (and b_q) rows x 1/N for every query head
// of the KV head's group. Exact: (q / N)^T R (N k) = q^T R k because N is constant per RoPE pair.
void fold_pre_rope_scaling(LayerF64& layer, const LlamaConfig& config, const std::vector<double>& n);

}  // namespace fireq
