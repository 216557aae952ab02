#include "fireq/quant_ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fireq/error.h"
#include "fireq/numerics.h"

namespace fireq {

// ---------------------------------------------------------------------------------------------
// INT4

float Int4Linear::inv_tensor_scale() const { return std::ldexp(1.0f, -tensor_scale_exponent); }

float Int4Linear::group_scale(int64_t row, int64_t group) const {
  const size_t i = static_cast<size_t>(row * groups_per_row() + group);
  return scale_dtype == ScaleDType::kFp8E4M3 ? fp8_e4m3_to_float(scales_fp8[i])
                                             : bf16_to_float(scales_bf16[i]);
}

std::vector<float> Int4Linear::dequantize() const {
  std::vector<float> w(static_cast<size_t>(out_features * in_features));
  const int64_t row_bytes = padded_in_features / 2;
  for (int64_t n = 0; n < out_features; ++n) {
    const uint8_t* packed_row = packed.data() + n * row_bytes;
    for (int64_t k = 0; k < in_features; ++k)
      w[n * in_features + k] =
          static_cast<float>(int4_at(packed_row, static_cast<int>(k))) * group_scale(n, k / group_size);
  }
  return w;
}

TensorScaleChoice choose_tensor_scale(const std::vector<double>& group_absmax, double w_min) {
  auto underflow = [&](double s) {
    double u = 0;
    for (const double g : group_absmax)
      if (g * s < w_min) u += (w_min - g * s) / w_min;
    return u;
  };
  auto overflows = [&](double s) {
    return std::any_of(group_absmax.begin(), group_absmax.end(),
                       [&](double g) { return g * s > kFp8E4M3Max; });
  };
  TensorScaleChoice choice;
  choice.underflow_at_one = underflow(1.0);
  choice.underflow = choice.underflow_at_one;
  for (int e = 1; e <= 14; ++e) {
    const double s = std::ldexp(1.0, e);
    if (overflows(s)) break;
    const double u = underflow(s);
    if (u < choice.underflow) {
      choice.exponent = e;
      choice.underflow = u;
    }
  }
  return choice;
}

namespace {

void require_finite(const std::vector<double>& values, const std::string& name) {
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i])) fail("tensor ", name, ": non-finite value ", values[i], " at element ", i);
}

double group_squared_error(const std::vector<float>& w, float sigma) {
  double error = 0;
  for (const float v : w) {
    const double d = static_cast<double>(v) - static_cast<double>(sigma) * int4_quantize(v, sigma);
    error += d * d;
  }
  return error;
}

// Scale-search candidates below absmax / 7: four FP8 codes (an e4m3 step is 1/16 to 1/8 of the
// value, so down to ~0.7x) or five BF16 scales at 0.96, 0.92, ..., 0.80 of it.
constexpr int kFp8SearchCodes = 4;
constexpr int kBf16SearchSteps = 5;

uint8_t search_fp8_scale(const std::vector<float>& w, uint8_t absmax_code) {
  uint8_t best = absmax_code;
  double best_error = group_squared_error(w, fp8_e4m3_to_float(absmax_code));
  for (int step = 1; step <= kFp8SearchCodes && absmax_code - step >= 1; ++step) {
    const auto code = static_cast<uint8_t>(absmax_code - step);  // positive e4m3 codes ascend with value
    const double error = group_squared_error(w, fp8_e4m3_to_float(code));
    if (error < best_error) best = code, best_error = error;
  }
  return best;
}

uint16_t search_bf16_scale(const std::vector<float>& w, float absmax_scale) {
  uint16_t best = bf16_from_float(absmax_scale);
  double best_error = group_squared_error(w, bf16_to_float(best));
  for (int step = 1; step <= kBf16SearchSteps; ++step) {
    const uint16_t bits = bf16_from_float(std::max(absmax_scale * (1.0f - 0.04f * step), kFp8E4M3MinSubnormal));
    const double error = group_squared_error(w, bf16_to_float(bits));
    if (error < best_error) best = bits, best_error = error;
  }
  return best;
}

}  // namespace

Int4Linear quantize_int4_linear(const Matrix64& weight, const std::vector<double>* bias,
                                const QuantRecipe& recipe, const std::string& name) {
  require_finite(weight.data, name);
  if (bias) require_finite(*bias, name + " (bias)");
  const int g = recipe.group_size;
  Int4Linear out;
  out.out_features = weight.rows;
  out.in_features = weight.cols;
  out.group_size = g;
  out.scale_dtype = recipe.weight_scale_dtype;
  if (weight.cols % g != 0) {
    if (recipe.k_remainder == KRemainder::kRefuse)
      fail("tensor ", name, ": K = ", weight.cols, " is not a multiple of the group size ", g,
           " (recipe weights.k_not_multiple_of_group: refuse; use zero_pad or group_size 64)");
  }
  out.padded_in_features = (weight.cols + g - 1) / g * g;
  const int64_t groups = out.groups_per_row();

  // Group absmax at s_t = 1 (after the clamp to 448 the weights get below), for the s_t search.
  std::vector<double> group_absmax(static_cast<size_t>(out.out_features * groups), 0.0);
  for (int64_t n = 0; n < out.out_features; ++n)
    for (int64_t k = 0; k < weight.cols; ++k) {
      double& m = group_absmax[n * groups + k / g];
      m = std::max(m, std::fabs(weight.row(n)[k]));
    }
  if (recipe.per_tensor_scale)
    out.tensor_scale_exponent =
        choose_tensor_scale(group_absmax, recipe.tensor_scale_floor == TensorScaleFloor::kNormal
                                              ? kInt4GroupMinNormalAbsmax
                                              : kInt4GroupMinAbsmax)
            .exponent;
  const double s_t = std::ldexp(1.0, out.tensor_scale_exponent);

  // Scaled, clamped float weights of one group, then sigma and q from numerics.h.
  out.packed.assign(static_cast<size_t>(out.out_features * out.padded_in_features / 2), 0);
  if (out.scale_dtype == ScaleDType::kFp8E4M3)
    out.scales_fp8.resize(static_cast<size_t>(out.out_features * groups));
  else
    out.scales_bf16.resize(static_cast<size_t>(out.out_features * groups));
  std::vector<float> w(static_cast<size_t>(g));
  for (int64_t n = 0; n < out.out_features; ++n) {
    uint8_t* packed_row = out.packed.data() + n * out.padded_in_features / 2;
    for (int64_t grp = 0; grp < groups; ++grp) {
      float absmax = 0;
      for (int j = 0; j < g; ++j) {
        const int64_t k = grp * g + j;
        const float v = k < weight.cols ? static_cast<float>(weight.row(n)[k] * s_t) : 0.0f;
        w[j] = std::clamp(v, -kFp8E4M3Max, kFp8E4M3Max);
        absmax = std::max(absmax, std::fabs(w[j]));
      }
      const bool search = recipe.group_scale_search == GroupScaleSearch::kMse;
      float sigma;
      if (out.scale_dtype == ScaleDType::kFp8E4M3) {
        const uint8_t absmax_code = int4_group_scale_e4m3(absmax);
        const uint8_t code = search ? search_fp8_scale(w, absmax_code) : absmax_code;
        out.scales_fp8[n * groups + grp] = code;
        sigma = fp8_e4m3_to_float(code);
      } else {
        // BF16 scales have no underflow problem; zero groups still get a valid, non-zero scale.
        const float absmax_scale = std::max(absmax / 7.0f, kFp8E4M3MinSubnormal);
        const uint16_t bits = search ? search_bf16_scale(w, absmax_scale) : bf16_from_float(absmax_scale);
        out.scales_bf16[n * groups + grp] = bits;
        sigma = bf16_to_float(bits);
      }
      for (int j = 0; j < g; j += 2) {
        const int64_t k = grp * g + j;
        packed_row[k / 2] = int4_pack(int4_quantize(w[j], sigma), int4_quantize(w[j + 1], sigma));
      }
    }
  }
  if (bias) {
    out.bias.resize(bias->size());
    for (size_t i = 0; i < bias->size(); ++i) out.bias[i] = static_cast<float>((*bias)[i] * s_t);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Smoothing

std::vector<double> smoothing_scales(const std::vector<const Matrix64*>& consumers,
                                     const SmoothingPair& pair) {
  const int64_t cols = consumers.front()->cols;
  std::vector<double> mean_abs(static_cast<size_t>(cols), 0.0), max_abs(static_cast<size_t>(cols), 0.0);
  int64_t rows = 0;
  for (const Matrix64* m : consumers) {
    if (m->cols != cols) fail("smoothing: consumers disagree on the input width (", m->cols, " vs ", cols, ")");
    for (int64_t r = 0; r < m->rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double a = std::fabs(m->row(r)[c]);
        mean_abs[c] += a;
        max_abs[c] = std::max(max_abs[c], a);
      }
    rows += m->rows;
  }
  std::vector<double> s(static_cast<size_t>(cols), pair.constant);
  if (pair.scale_type == 0) return s;
  for (int64_t c = 0; c < cols; ++c) {
    const double stat = pair.scale_type == 2 ? mean_abs[c] / static_cast<double>(rows) : max_abs[c];
    s[c] = stat > 0 ? pair.constant / stat : 1.0;
  }
  return s;
}

namespace {

void scale_columns(Matrix64& m, const std::vector<double>& s) {
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < m.cols; ++c) m.row(r)[c] *= s[c];
}

// Row r (and bias r) x factor[r].
void scale_rows(Matrix64& m, std::vector<double>* bias, const std::vector<double>& factor) {
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < m.cols; ++c) m.row(r)[c] *= factor[r];
  if (bias && !bias->empty())
    for (int64_t r = 0; r < m.rows; ++r) (*bias)[r] *= factor[r];
}

std::vector<double> reciprocal(std::vector<double> s) {
  for (double& v : s) v = 1.0 / v;
  return s;
}

void smooth_into_norm(std::vector<double>& gamma, const std::vector<Matrix64*>& consumers,
                      const SmoothingPair& pair) {
  const std::vector<double> s =
      smoothing_scales(std::vector<const Matrix64*>(consumers.begin(), consumers.end()), pair);
  for (Matrix64* m : consumers) scale_columns(*m, s);
  for (size_t j = 0; j < gamma.size(); ++j) gamma[j] /= s[j];
}

// o_proj's input column (query head h, channel d) reads V row (h / group, d): one scale per V row,
// the mean of the scales its query heads' columns would want.
void smooth_o_into_v(LayerF64& layer, const LlamaConfig& config, const SmoothingPair& pair) {
  const std::vector<double> per_column = smoothing_scales({&layer.wo}, pair);
  const int d = config.head_dim, group = config.gqa_group();
  std::vector<double> per_v_row(static_cast<size_t>(config.kv_dim()), 0.0);
  for (int h = 0; h < config.num_attention_heads; ++h)
    for (int c = 0; c < d; ++c) per_v_row[(h / group) * d + c] += per_column[h * d + c] / group;
  std::vector<double> s(per_column.size());
  for (int h = 0; h < config.num_attention_heads; ++h)
    for (int c = 0; c < d; ++c) s[h * d + c] = per_v_row[(h / group) * d + c];
  scale_columns(layer.wo, s);
  scale_rows(layer.wv, &layer.bv, reciprocal(per_v_row));
}

}  // namespace

void apply_weight_transforms(LayerF64& layer, const LlamaConfig& config, const QuantRecipe& recipe) {
  if (recipe.v_mul != 1.0) {
    scale_rows(layer.wv, &layer.bv, std::vector<double>(static_cast<size_t>(layer.wv.rows), recipe.v_mul));
    for (double& w : layer.wo.data) w /= recipe.v_mul;
  }
  if (recipe.smooth_qkv.enabled)
    smooth_into_norm(layer.attn_norm, {&layer.wq, &layer.wk, &layer.wv}, recipe.smooth_qkv);
  if (recipe.smooth_gate_up.enabled)
    smooth_into_norm(layer.ffn_norm, {&layer.w_up, &layer.w_gate}, recipe.smooth_gate_up);
  if (recipe.smooth_down.enabled) {
    const std::vector<double> s = smoothing_scales({&layer.w_down}, recipe.smooth_down);
    scale_columns(layer.w_down, s);
    scale_rows(layer.w_up, nullptr, reciprocal(s));
  }
  if (recipe.smooth_o.enabled) smooth_o_into_v(layer, config, recipe.smooth_o);
}

// ---------------------------------------------------------------------------------------------
// RoPE-aware scaling

RopeScaling compute_rope_scaling(const KeyStatistics& stats, const QuantRecipe& recipe) {
  const int d = stats.head_dim, half = d / 2, heads = stats.kv_heads;
  RopeScaling out;
  std::vector<bool> covered(static_cast<size_t>(heads * d), false);
  if (recipe.post_rope) {
    const int top_k = recipe.post_rope_top_k;
    if (top_k > half) fail("recipe attention.post_rope.top_k = ", top_k, " exceeds head_dim / 2 = ", half);
    out.post_rope.assign(static_cast<size_t>(heads * d), 1.0f);
    for (int h = 0; h < heads; ++h) {
      const double* m = stats.post_rope_absmax.data() + h * d;
      std::vector<int> pairs(static_cast<size_t>(half));
      std::iota(pairs.begin(), pairs.end(), 0);
      // Stable so that ties keep the lower pair: the choice is deterministic.
      std::stable_sort(pairs.begin(), pairs.end(), [&](int a, int b) {
        return std::max(m[a], m[a + half]) > std::max(m[b], m[b + half]);
      });
      std::vector<int32_t> channels;
      for (int i = 0; i < top_k; ++i) {
        channels.push_back(pairs[i]);
        channels.push_back(pairs[i] + half);
      }
      std::sort(channels.begin(), channels.end());
      for (const int32_t c : channels) {
        covered[h * d + c] = true;
        out.post_rope[h * d + c] = m[c] > 0 ? static_cast<float>(recipe.post_rope_beta / m[c]) : 1.0f;
      }
      out.post_rope_channels.insert(out.post_rope_channels.end(), channels.begin(), channels.end());
    }
  }
  if (recipe.pre_rope) {
    out.pre_rope.assign(static_cast<size_t>(heads * d), 1.0);
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < half; ++i) {
        const double norm = stats.pair_norm_max[h * half + i];
        if (covered[h * d + i] || norm <= 0) continue;
        out.pre_rope[h * d + i] = out.pre_rope[h * d + i + half] = recipe.pre_rope_alpha / norm;
      }
  }
  return out;
}

void fold_pre_rope_scaling(LayerF64& layer, const LlamaConfig& config, const std::vector<double>& n) {
  const int d = config.head_dim, group = config.gqa_group();
  scale_rows(layer.wk, &layer.bk, n);
  std::vector<double> q_factor(static_cast<size_t>(config.q_dim()));
  for (int h = 0; h < config.num_attention_heads; ++h)
    for (int c = 0; c < d; ++c) q_factor[h * d + c] = 1.0 / n[(h / group) * d + c];
  scale_rows(layer.wq, &layer.bq, q_factor);
}

}  // namespace fireq
