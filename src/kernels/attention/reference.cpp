// CPU references for the attention kernels: the same numerics as the kernels, written plainly.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "fireq/error.h"
#include "fireq/kernels/attention.h"

namespace fireq::attention {
namespace {

constexpr double kLog2e = std::numbers::log2e;

int group_size(int q_heads, int kv_heads) { return q_heads / kv_heads; }

int64_t qkv_row_width(int q_heads, const PagedKvLayout& layout) {
  return int64_t{q_heads + 2 * layout.kv_heads} * layout.head_dim;
}

// Page id of a sequence's token, checked against the block table and the pool.
int page_of(const PagedKvCache& cache, const PagedSequences& sequences, int seq, int position) {
  const int page_index = position / cache.layout.page_size;
  if (page_index >= sequences.max_pages_per_seq)
    fail("attention: sequence ", seq, " position ", position, " needs page ", page_index,
         " but block_table has max_pages_per_seq = ", sequences.max_pages_per_seq);
  const int page = sequences.block_table[int64_t{seq} * sequences.max_pages_per_seq + page_index];
  if (page < 0 || page >= cache.layout.num_pages)
    fail("attention: block_table[", seq, "][", page_index, "] = ", page, " is outside the pool of ",
         cache.layout.num_pages, " pages");
  return page;
}

void check_cache_pointers(const PagedKvCache& cache, const char* what) {
  check_layout(cache.layout);
  if (!cache.k || !cache.v || !cache.k_scale || !cache.v_scale)
    fail(what, ": cache pointers k, v, k_scale and v_scale must all be set");
}

// Writes one INT4 value into a V^T channel row (the nibble of its slot).
void set_v_nibble(uint8_t* channel_row, int slot, int value) {
  uint8_t& byte = channel_row[slot / 2];
  byte = (slot & 1) ? int4_pack(int4_unpack_low(byte), value) : int4_pack(value, int4_unpack_high(byte));
}

struct QuantizedRow {
  std::vector<int> values;
  float scale = 1.0f;
};

QuantizedRow quantize_kv_row(const float* x, int head_dim) {
  float absmax = 0.0f;
  for (int c = 0; c < head_dim; ++c) absmax = std::max(absmax, std::fabs(x[c]));
  QuantizedRow row{std::vector<int>(head_dim), kv_int4_scale_bf16(absmax)};
  for (int c = 0; c < head_dim; ++c) row.values[c] = int4_quantize(x[c], row.scale);
  return row;
}

// rotate_half RoPE of one head in place, with the exact operation order the kernel uses.
void rotate(float* x, int head_dim, const float* cos_sin_row) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float c = cos_sin_row[2 * i], s = cos_sin_row[2 * i + 1];
    const float lo = x[i], hi = x[i + half];
    x[i] = std::fma(lo, c, -(hi * s));
    x[i + half] = std::fma(hi, c, lo * s);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::vector<float> rope_cos_sin_table(int head_dim, double theta, const RopeScalingLlama3& scaling,
                                      int max_position) {
  if (head_dim <= 0 || head_dim % 2) fail("rope_cos_sin_table: head_dim ", head_dim, " must be even and > 0");
  if (max_position <= 0) fail("rope_cos_sin_table: max_position ", max_position, " must be > 0");
  if (!(theta > 0.0)) fail("rope_cos_sin_table: rope_theta ", theta, " must be > 0");
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = 1.0 / std::pow(theta, 2.0 * i / head_dim);
  if (scaling.enabled) {  // Llama 3.1: stretch low frequencies, keep high ones, blend between
    const double old_context = scaling.original_max_position_embeddings;
    const double low_wavelen = old_context / scaling.low_freq_factor;
    const double high_wavelen = old_context / scaling.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_context / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
  }
  std::vector<float> table(size_t(max_position) * half * 2);
  for (int p = 0; p < max_position; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = p * inv_freq[i];
      table[(size_t(p) * half + i) * 2] = static_cast<float>(std::cos(angle));
      table[(size_t(p) * half + i) * 2 + 1] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

// ---------------------------------------------------------------------------------------------
void check_layout(const PagedKvLayout& layout) {
  if (layout.head_dim != 64 && layout.head_dim != 128)
    fail("attention: head_dim ", layout.head_dim, " is not supported (64 or 128)");
  if (layout.kv_heads <= 0) fail("attention: kv_heads ", layout.kv_heads, " must be > 0");
  if (layout.page_size < kPageSizeMultiple || (layout.page_size & (layout.page_size - 1)))
    fail("attention: page_size ", layout.page_size, " must be a power of two >= ", kPageSizeMultiple);
  if (layout.num_pages <= 0) fail("attention: num_pages ", layout.num_pages, " must be > 0");
}

void check_shapes(const QkvQuantizeArgs& args) {
  check_cache_pointers(args.cache, "quantize_qkv");
  if (args.tokens < 0) fail("quantize_qkv: tokens ", args.tokens, " < 0");
  if (args.q_heads <= 0 || args.q_heads % args.cache.layout.kv_heads)
    fail("quantize_qkv: q_heads ", args.q_heads, " must be a positive multiple of kv_heads ",
         args.cache.layout.kv_heads);
  if (args.max_position <= 0) fail("quantize_qkv: max_position ", args.max_position, " must be > 0");
  if (args.tokens > 0 && (!args.qkv || !args.positions || !args.seq_index || !args.rope_cos_sin ||
                          !args.q_fp8 || !args.q_scale || !args.sequences.block_table))
    fail("quantize_qkv: qkv, positions, seq_index, rope_cos_sin, q_fp8, q_scale and block_table must be set");
  if (args.sequences.batch <= 0 || args.sequences.max_pages_per_seq <= 0)
    fail("quantize_qkv: batch ", args.sequences.batch, " and max_pages_per_seq ",
         args.sequences.max_pages_per_seq, " must be > 0");
}

void check_shapes(const PagedAttentionArgs& args) {
  check_cache_pointers(args.cache, "paged_attention");
  const PagedSequences& seqs = args.sequences;
  if (args.q_heads <= 0 || args.q_heads % args.cache.layout.kv_heads)
    fail("paged_attention: q_heads ", args.q_heads, " must be a positive multiple of kv_heads ",
         args.cache.layout.kv_heads);
  if (seqs.batch <= 0 || seqs.max_pages_per_seq <= 0)
    fail("paged_attention: batch ", seqs.batch, " and max_pages_per_seq ", seqs.max_pages_per_seq,
         " must be > 0");
  if (args.max_query_len <= 0 || args.max_seq_len < args.max_query_len)
    fail("paged_attention: need 0 < max_query_len (", args.max_query_len, ") <= max_seq_len (",
         args.max_seq_len, ")");
  if (int64_t{args.max_seq_len} > int64_t{seqs.max_pages_per_seq} * args.cache.layout.page_size)
    fail("paged_attention: max_seq_len ", args.max_seq_len, " exceeds max_pages_per_seq * page_size = ",
         int64_t{seqs.max_pages_per_seq} * args.cache.layout.page_size);
  if (!(args.softmax_scale > 0.0f) || !std::isfinite(args.softmax_scale))
    fail("paged_attention: softmax_scale ", args.softmax_scale, " must be finite and > 0");
  if (!args.q || !args.q_scale || !args.query_start || !args.out || !seqs.block_table || !seqs.seq_lens)
    fail("paged_attention: q, q_scale, query_start, out, block_table and seq_lens must be set");
  if (args.out_fp8 && (!args.out_fp8_scale || !args.out_fp8_workspace || args.total_queries <= 0))
    fail("paged_attention: out_fp8 needs out_fp8_scale, out_fp8_workspace and total_queries > 0 (got ",
         args.total_queries, ")");
}

void check_metadata(const QkvQuantizeArgs& args) {
  check_shapes(args);
  std::vector<char> finished(args.sequences.batch, 0);
  for (int t = 0; t < args.tokens; ++t) {
    const int seq = args.seq_index[t], pos = args.positions[t];
    if (seq < 0 || seq >= args.sequences.batch)
      fail("quantize_qkv: seq_index[", t, "] = ", seq, " outside [0, ", args.sequences.batch, ")");
    if (pos < 0 || pos >= args.max_position)
      fail("quantize_qkv: positions[", t, "] = ", pos, " outside the RoPE table [0, ", args.max_position, ")");
    const bool continues = t > 0 && args.seq_index[t - 1] == seq;
    if (continues && pos != args.positions[t - 1] + 1)
      fail("quantize_qkv: token ", t, " of sequence ", seq, " has position ", pos, " after ",
           args.positions[t - 1], " (positions must be consecutive)");
    if (!continues && finished[seq])
      fail("quantize_qkv: the tokens of sequence ", seq, " are not contiguous (seen again at token ", t, ")");
    if (t > 0 && !continues) finished[args.seq_index[t - 1]] = 1;
    page_of(args.cache, args.sequences, seq, pos);
  }
}

void check_metadata(const PagedAttentionArgs& args) {
  check_shapes(args);
  const PagedSequences& seqs = args.sequences;
  if (args.query_start[0] != 0) fail("paged_attention: query_start[0] = ", args.query_start[0], ", must be 0");
  for (int b = 0; b < seqs.batch; ++b) {
    const int q_len = args.query_start[b + 1] - args.query_start[b];
    const int seq_len = seqs.seq_lens[b];
    if (q_len < 0 || q_len > args.max_query_len)
      fail("paged_attention: sequence ", b, " has ", q_len, " queries, outside [0, max_query_len = ",
           args.max_query_len, "]");
    if (seq_len < q_len || seq_len > args.max_seq_len)
      fail("paged_attention: seq_lens[", b, "] = ", seq_len, " must lie in [its ", q_len,
           " queries, max_seq_len = ", args.max_seq_len, "]");
    for (int pos = 0; pos < seq_len; pos += args.cache.layout.page_size) page_of(args.cache, seqs, b, pos);
  }
}

// ---------------------------------------------------------------------------------------------
void quantize_qkv_reference(const QkvQuantizeArgs& args) {
  check_metadata(args);
  const PagedKvLayout& layout = args.cache.layout;
  const int d = layout.head_dim, half = d / 2, group = group_size(args.q_heads, layout.kv_heads);
  const int64_t width = qkv_row_width(args.q_heads, layout);
  std::vector<float> x(d);
  auto load_head = [&](int token, int column_head) {
    for (int c = 0; c < d; ++c) x[c] = bf16_to_float(args.qkv[token * width + int64_t{column_head} * d + c]);
  };
  for (int t = 0; t < args.tokens; ++t) {
    const int pos = args.positions[t], seq = args.seq_index[t];
    const float* cos_sin = args.rope_cos_sin + int64_t{pos} * half * 2;
    for (int head = 0; head < args.q_heads; ++head) {
      load_head(t, head);
      rotate(x.data(), d, cos_sin);
      if (args.post_rope_k_scale)
        for (int c = 0; c < d; ++c) x[c] /= args.post_rope_k_scale[(head / group) * d + c];
      float absmax = 0.0f;
      for (int c = 0; c < d; ++c) absmax = std::max(absmax, std::fabs(x[c]));
      const float scale = fp8_token_scale(absmax);
      args.q_scale[int64_t{t} * args.q_heads + head] = bf16_from_float(scale);
      uint8_t* q_out = args.q_fp8 + (int64_t{t} * args.q_heads + head) * d;
      for (int c = 0; c < d; ++c) q_out[c] = fp8_quantize_activation(x[c], scale);
    }
    const int page = page_of(args.cache, args.sequences, seq, pos), slot = pos % layout.page_size;
    for (int h = 0; h < layout.kv_heads; ++h) {
      load_head(t, args.q_heads + h);
      rotate(x.data(), d, cos_sin);
      if (args.post_rope_k_scale)
        for (int c = 0; c < d; ++c) x[c] *= args.post_rope_k_scale[h * d + c];
      const QuantizedRow k = quantize_kv_row(x.data(), d);
      uint8_t* k_row = args.cache.k + layout.k_row_offset(page, h, slot);
      for (int j = 0; j < half; ++j) k_row[j] = int4_pack(k.values[2 * j], k.values[2 * j + 1]);
      args.cache.k_scale[layout.scale_offset(page, h, slot)] = bf16_from_float(k.scale);

      load_head(t, args.q_heads + layout.kv_heads + h);
      const QuantizedRow v = quantize_kv_row(x.data(), d);
      for (int c = 0; c < d; ++c) set_v_nibble(args.cache.v + layout.v_channel_offset(page, h, c), slot, v.values[c]);
      args.cache.v_scale[layout.scale_offset(page, h, slot)] = bf16_from_float(v.scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
void read_cached_token(const PagedKvCache& cache, const PagedSequences& sequences, int seq, int position,
                       int kv_head, float* k, float* v) {
  const PagedKvLayout& layout = cache.layout;
  const int page = page_of(cache, sequences, seq, position), slot = position % layout.page_size;
  const float k_scale = bf16_to_float(cache.k_scale[layout.scale_offset(page, kv_head, slot)]);
  const float v_scale = bf16_to_float(cache.v_scale[layout.scale_offset(page, kv_head, slot)]);
  const uint8_t* k_row = cache.k + layout.k_row_offset(page, kv_head, slot);
  for (int c = 0; c < layout.head_dim; ++c) {
    k[c] = static_cast<float>(int4_at(k_row, c)) * k_scale;
    v[c] = static_cast<float>(int4_at(cache.v + layout.v_channel_offset(page, kv_head, c), slot)) * v_scale;
  }
}

namespace {

// One sequence's cache for one KV head, unpacked: integer values and scales per position.
struct UnpackedHead {
  std::vector<float> k_int, v_int;  // [seq_len][d]
  std::vector<float> k_scale, v_scale;
};

UnpackedHead unpack_head(const PagedKvCache& cache, const PagedSequences& seqs, int seq, int seq_len, int h) {
  const PagedKvLayout& layout = cache.layout;
  const int d = layout.head_dim;
  UnpackedHead u{std::vector<float>(size_t(seq_len) * d), std::vector<float>(size_t(seq_len) * d),
                 std::vector<float>(seq_len), std::vector<float>(seq_len)};
  for (int t = 0; t < seq_len; ++t) {
    const int page = page_of(cache, seqs, seq, t), slot = t % layout.page_size;
    u.k_scale[t] = bf16_to_float(cache.k_scale[layout.scale_offset(page, h, slot)]);
    u.v_scale[t] = bf16_to_float(cache.v_scale[layout.scale_offset(page, h, slot)]);
    const uint8_t* k_row = cache.k + layout.k_row_offset(page, h, slot);
    for (int c = 0; c < d; ++c) {
      u.k_int[size_t(t) * d + c] = static_cast<float>(int4_at(k_row, c));
      u.v_int[size_t(t) * d + c] =
          static_cast<float>(int4_at(cache.v + layout.v_channel_offset(page, h, c), slot));
    }
  }
  return u;
}

constexpr int kFp8TileTokens = 128;

// The weight of token t in the P.V product and its normalisation, per PRounding.
void accumulate_row(const std::vector<float>& scores, const UnpackedHead& u, int d, PRounding rounding,
                    double* numerator, double& denominator) {
  const int n = static_cast<int>(scores.size());
  float row_max = -INFINITY;
  for (const float s : scores) row_max = std::max(row_max, s);
  std::vector<float> p(n);
  for (int t = 0; t < n; ++t) {
    p[t] = std::exp2(scores[t] - row_max);
    denominator += p[t];
  }
  for (int tile = 0; tile < n; tile += kFp8TileTokens) {
    const int end = std::min(n, tile + kFp8TileTokens);
    float tile_v_max = 0.0f;
    for (int t = tile; t < end; ++t) tile_v_max = std::max(tile_v_max, u.v_scale[t]);
    for (int t = tile; t < end; ++t) {
      double weight;
      if (rounding == PRounding::fp16) {
        weight = round_to_f16(p[t] * u.v_scale[t]);
      } else {
        const float to_fp8 = kFp8E4M3Max / tile_v_max;
        weight = double(round_to_fp8_e4m3(p[t] * u.v_scale[t] * to_fp8)) * (tile_v_max / kFp8E4M3Max);
      }
      const float* v = &u.v_int[size_t(t) * d];
      for (int c = 0; c < d; ++c) numerator[c] += weight * v[c];
    }
  }
}

// The FP8 copy of the BF16 output: numerics.h's per-token rule over each token's q_heads * d values.
void quantize_output_fp8(const PagedAttentionArgs& args) {
  if (args.query_start[args.sequences.batch] != args.total_queries)
    fail("paged_attention: total_queries ", args.total_queries, " differs from query_start[batch] = ",
         args.query_start[args.sequences.batch]);
  const int64_t row = int64_t{args.q_heads} * args.cache.layout.head_dim;
  for (int64_t token = 0; token < args.total_queries; ++token) {
    const uint16_t* x = args.out + token * row;
    float absmax = 0.0f;
    for (int64_t i = 0; i < row; ++i) absmax = std::max(absmax, std::fabs(bf16_to_float(x[i])));
    const float scale = fp8_token_scale(absmax);
    args.out_fp8_scale[token] = scale;
    for (int64_t i = 0; i < row; ++i) args.out_fp8[token * row + i] = fp8_quantize_activation(bf16_to_float(x[i]), scale);
  }
}

}  // namespace

void paged_attention_reference(const PagedAttentionArgs& args, PRounding rounding) {
  check_metadata(args);
  const PagedKvLayout& layout = args.cache.layout;
  const int d = layout.head_dim, group = group_size(args.q_heads, layout.kv_heads);
  const float log2e = static_cast<float>(kLog2e);
  std::vector<double> numerator(d);
  for (int b = 0; b < args.sequences.batch; ++b) {
    const int q_begin = args.query_start[b], q_len = args.query_start[b + 1] - q_begin;
    const int seq_len = args.sequences.seq_lens[b];
    for (int h = 0; h < layout.kv_heads; ++h) {
      if (q_len == 0) continue;
      const UnpackedHead u = unpack_head(args.cache, args.sequences, b, seq_len, h);
      for (int i = 0; i < q_len; ++i) {
        const int visible = seq_len - q_len + i + 1;  // causal: positions <= the query's own
        for (int head = h * group; head < (h + 1) * group; ++head) {
          const int64_t row = int64_t{q_begin + i} * args.q_heads + head;
          const uint8_t* q = args.q + row * d;
          const float qk_factor = bf16_to_float(args.q_scale[row]) * args.softmax_scale * log2e;
          std::vector<float> scores(visible);
          for (int t = 0; t < visible; ++t) {
            double dot = 0.0;  // exact: the kernel's FP32 accumulation is checked against this
            for (int c = 0; c < d; ++c) dot += double(fp8_e4m3_to_float(q[c])) * u.k_int[size_t(t) * d + c];
            scores[t] = (static_cast<float>(dot) * u.k_scale[t]) * qk_factor;
          }
          std::fill(numerator.begin(), numerator.end(), 0.0);
          double denominator = 0.0;
          accumulate_row(scores, u, d, rounding, numerator.data(), denominator);
          for (int c = 0; c < d; ++c)
            args.out[row * d + c] = bf16_from_float(static_cast<float>(numerator[c] / denominator));
        }
      }
    }
  }
  if (args.out_fp8) quantize_output_fp8(args);
}

// ---------------------------------------------------------------------------------------------
std::vector<double> attention_fp64(const float* q, const float* k, const float* v, int queries, int seq_len,
                                   int q_heads, int kv_heads, int head_dim, double softmax_scale) {
  const int group = q_heads / kv_heads;
  std::vector<double> out(size_t(queries) * q_heads * head_dim, 0.0);
  std::vector<double> weights(seq_len);
  for (int i = 0; i < queries; ++i) {
    const int visible = seq_len - queries + i + 1;
    for (int head = 0; head < q_heads; ++head) {
      const int h = head / group;
      const float* qrow = q + (size_t(i) * q_heads + head) * head_dim;
      double row_max = -INFINITY;
      for (int t = 0; t < visible; ++t) {
        const float* krow = k + (size_t(t) * kv_heads + h) * head_dim;
        double dot = 0.0;
        for (int c = 0; c < head_dim; ++c) dot += double(qrow[c]) * krow[c];
        weights[t] = dot * softmax_scale;
        row_max = std::max(row_max, weights[t]);
      }
      double sum = 0.0;
      for (int t = 0; t < visible; ++t) sum += (weights[t] = std::exp(weights[t] - row_max));
      double* o = &out[(size_t(i) * q_heads + head) * head_dim];
      for (int t = 0; t < visible; ++t) {
        const float* vrow = v + (size_t(t) * kv_heads + h) * head_dim;
        for (int c = 0; c < head_dim; ++c) o[c] += weights[t] / sum * vrow[c];
      }
    }
  }
  return out;
}

}  // namespace fireq::attention
