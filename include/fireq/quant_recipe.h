// A FireQ quantization recipe: every knob of the method (FIREQ_METHOD.md §1-§3), read from YAML.
// Built-in presets (the files in recipes/, compiled in): fireq-default (the published Llama-3-8B
// settings), w4a8 (linear layers only), kv4 (KV cache only), none (nothing quantized), and
// fireq-smollm2 (tuned for SmolLM2-135M). A recipe may start from a preset with `base: NAME`; keys
// it sets override the base, keys it omits keep the base's value (without a base: `none`).
// Unknown keys, wrong types and out-of-range values are refused with the key path named.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fireq {

enum class ScaleDType { kFp8E4M3, kBf16 };

// What to do when a linear's K (input features) is not a multiple of the group size.
enum class KRemainder {
  kRefuse,   // fail naming the tensor
  kZeroPad,  // pad K with zero columns to the next multiple (exact: the padded inputs are zero)
};

// Which FP8 group scales count as underflowing in the per-tensor scale search.
enum class TensorScaleFloor {
  kSubnormal,  // published: sigma below e4m3's smallest subnormal 2^-9 (group absmax < 7 * 2^-9)
  kNormal,     // sigma inside e4m3's subnormal range too (group absmax < 7 * 2^-6)
};

// How each INT4 group's scale is chosen.
enum class GroupScaleSearch {
  kAbsmax,  // published: sigma = group absmax / 7, rounded to the scale dtype
  kMse,     // among that scale and the representable scales just below it, the one with the least
            // squared error of the group's weights (clipping the largest ones to round the rest better)
};

enum class ActivationDType {
  kFp8E4M3PerToken,  // dynamic FP8, one BF16 scale per token (W4A8)
  kBf16,             // BF16 activations (W4A16)
};

// Channel-wise smoothing of one producer -> consumer pair from weight statistics (§1):
// s_j = c / mean_i |W_ij| (scale_type 2), c / max_i |W_ij| (1), c (0).
struct SmoothingPair {
  bool enabled = false;
  int scale_type = 2;
  double constant = 1.0;
};

struct QuantRecipe {
  std::string name = "none";
  std::string description;

  // Linear layers (q, k, v, o, gate, up, down of every block not skipped).
  bool quantize_weights = false;
  int weight_bits = 4;
  int group_size = 128;  // 64 or 128, along K
  ScaleDType weight_scale_dtype = ScaleDType::kFp8E4M3;
  KRemainder k_remainder = KRemainder::kRefuse;
  bool per_tensor_scale = false;  // search s_t = 2^0..2^14 against FP8 group-scale underflow
  TensorScaleFloor tensor_scale_floor = TensorScaleFloor::kSubnormal;
  GroupScaleSearch group_scale_search = GroupScaleSearch::kAbsmax;
  ActivationDType activations = ActivationDType::kBf16;

  SmoothingPair smooth_qkv, smooth_o, smooth_gate_up, smooth_down;
  double v_mul = 1.0;  // W_v x v_mul, W_o x 1/v_mul

  // Attention: FP8 queries (per token and head), INT4 K/V (per token and KV head).
  bool fp8_queries = false;
  int kv_bits = 16;  // 4 (INT4 cache) or 16 (unquantized)
  ScaleDType kv_scale_dtype = ScaleDType::kFp8E4M3;
  bool pre_rope = false;
  double pre_rope_alpha = 8.0;
  bool post_rope = false;
  double post_rope_beta = 8.0;
  int post_rope_top_k = 8;

  // Calibration: `samples` windows of `seq_len` tokens from `text` (never the evaluation text).
  std::string calib_text = "data/text/wiki.calib.txt";
  int calib_samples = 10;
  int calib_seq_len = 2048;

  std::vector<int> skip_layers;  // blocks left unquantized (weights BF16, cache unquantized)

  bool quantize_kv() const { return kv_bits == 4; }
  bool any_smoothing() const {
    return smooth_qkv.enabled || smooth_o.enabled || smooth_gate_up.enabled || smooth_down.enabled;
  }
  // Calibration is needed only for statistics of activations (RoPE scaling); everything else
  // comes from the weights.
  bool needs_calibration() const { return pre_rope || post_rope; }
  bool skips_layer(int layer) const;
};

// Parses recipe YAML; `source` names the file in error messages. Validates every field.
QuantRecipe parse_recipe(std::string_view yaml_text, const std::string& source);
// A built-in preset by name, or a YAML file by path.
QuantRecipe load_recipe(const std::string& name_or_path);
std::vector<std::string> builtin_recipe_names();
// The YAML text of a built-in preset (as in recipes/NAME.yaml); fails on an unknown name.
std::string_view builtin_recipe_yaml(std::string_view name);

// The full recipe, every field explicit, as YAML and as JSON (for config.json's
// quantization_config). Both parse back to an identical recipe.
std::string recipe_to_yaml(const QuantRecipe& recipe);
std::string recipe_to_json(const QuantRecipe& recipe);
// Checks invariants across fields (e.g. post_rope needs kv_bits 4); parse_recipe calls it.
void validate_recipe(const QuantRecipe& recipe, const std::string& source);

}  // namespace fireq
