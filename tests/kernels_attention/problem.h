// A random paged attention problem on the host: sequences of random BF16 q/k/v rows quantized into
// a paged INT4 cache (pages in shuffled order) by the CPU reference, and the queries of the last
// q_len tokens of every sequence. Shared by the CPU and GPU tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "fireq/kernels/attention.h"

namespace fireq::attention::testing {

struct ProblemSpec {
  int q_heads = 8;
  int kv_heads = 2;
  int head_dim = 128;
  int page_size = 16;
  std::vector<int> seq_lens;  // tokens in the cache per sequence
  std::vector<int> q_lens;    // queries per sequence (the last q_len tokens)
  bool post_rope_scaling = true;
  bool llama3_rope = true;
  uint32_t seed = 1;
};

struct HostProblem {
  ProblemSpec spec;
  PagedKvLayout layout;
  int tokens = 0;
  int max_position = 0;
  std::vector<uint16_t> qkv;  // BF16 [tokens][(q_heads + 2 kv_heads) d]
  std::vector<int32_t> positions, seq_index;
  std::vector<float> rope, post_rope_k_scale;
  std::vector<int32_t> block_table;
  int max_pages = 0;
  std::vector<uint8_t> k, v;
  std::vector<uint16_t> k_scale, v_scale;
  std::vector<uint8_t> q_all;  // FP8 [tokens][q_heads][d]: quantize_qkv's output
  std::vector<uint16_t> q_scale_all;
  std::vector<int32_t> query_start, seq_lens;
  std::vector<uint8_t> q;      // the query rows only
  std::vector<uint16_t> q_scale;
  std::vector<uint16_t> out;
  int total_queries = 0, max_query_len = 0, max_seq_len = 0;

  PagedKvCache cache() {
    return PagedKvCache{layout, k.data(), v.data(), k_scale.data(), v_scale.data()};
  }
  PagedSequences sequences() {
    return PagedSequences{static_cast<int>(spec.seq_lens.size()), block_table.data(), max_pages, seq_lens.data()};
  }
  QkvQuantizeArgs quantize_args() {
    QkvQuantizeArgs a;
    a.qkv = qkv.data();
    a.tokens = tokens;
    a.q_heads = spec.q_heads;
    a.positions = positions.data();
    a.seq_index = seq_index.data();
    a.rope_cos_sin = rope.data();
    a.max_position = max_position;
    a.post_rope_k_scale = spec.post_rope_scaling ? post_rope_k_scale.data() : nullptr;
    a.q_fp8 = q_all.data();
    a.q_scale = q_scale_all.data();
    a.cache = cache();
    a.sequences = sequences();
    return a;
  }
  PagedAttentionArgs attention_args() {
    PagedAttentionArgs a;
    a.q = q.data();
    a.q_scale = q_scale.data();
    a.query_start = query_start.data();
    a.q_heads = spec.q_heads;
    a.max_query_len = max_query_len;
    a.max_seq_len = max_seq_len;
    a.cache = cache();
    a.sequences = sequences();
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(spec.head_dim));
    a.out = out.data();
    return a;
  }

  // Dequantized inputs of sequence b for attention_fp64: q of its queries, k and v of all tokens.
  void dequantized(int b, std::vector<float>& qf, std::vector<float>& kf, std::vector<float>& vf) {
    const int d = spec.head_dim, n = seq_lens[b], nq = query_start[b + 1] - query_start[b];
    qf.assign(size_t(nq) * spec.q_heads * d, 0.0f);
    for (int i = 0; i < nq; ++i)
      for (int h = 0; h < spec.q_heads; ++h) {
        const size_t row = size_t(query_start[b] + i) * spec.q_heads + h;
        for (int c = 0; c < d; ++c)
          qf[(size_t(i) * spec.q_heads + h) * d + c] = fp8_e4m3_to_float(q[row * d + c]) * bf16_to_float(q_scale[row]);
      }
    kf.assign(size_t(n) * spec.kv_heads * d, 0.0f);
    vf.assign(kf.size(), 0.0f);
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < spec.kv_heads; ++h)
        read_cached_token(cache(), sequences(), b, t, h, &kf[(size_t(t) * spec.kv_heads + h) * d],
                          &vf[(size_t(t) * spec.kv_heads + h) * d]);
  }
};

// Random inputs with a few large K channels (the outliers FireQ's post-RoPE scaling is for).
inline HostProblem make_problem(const ProblemSpec& spec) {
  HostProblem p;
  p.spec = spec;
  std::mt19937 rng(spec.seed);
  const int d = spec.head_dim, batch = static_cast<int>(spec.seq_lens.size());
  p.seq_lens.assign(spec.seq_lens.begin(), spec.seq_lens.end());
  p.tokens = std::accumulate(spec.seq_lens.begin(), spec.seq_lens.end(), 0);
  p.max_seq_len = *std::max_element(spec.seq_lens.begin(), spec.seq_lens.end());
  p.max_position = p.max_seq_len + 3;
  RopeScalingLlama3 scaling;
  if (spec.llama3_rope) scaling = RopeScalingLlama3{true, 8.0, 1.0, 4.0, 8192};
  p.rope = rope_cos_sin_table(d, 500000.0, scaling, p.max_position);

  // Pages: every sequence gets ceil(len / page) of a shuffled pool with spare pages.
  p.max_pages = (p.max_seq_len + spec.page_size - 1) / spec.page_size;
  int pages_needed = 0;
  for (const int n : spec.seq_lens) pages_needed += (n + spec.page_size - 1) / spec.page_size;
  p.layout = PagedKvLayout{pages_needed + 3, spec.page_size, spec.kv_heads, d};
  std::vector<int32_t> pool(p.layout.num_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  p.block_table.assign(size_t(batch) * p.max_pages, -1);
  int next = 0;
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < (spec.seq_lens[b] + spec.page_size - 1) / spec.page_size; ++i)
      p.block_table[size_t(b) * p.max_pages + i] = pool[next++];

  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int width = (spec.q_heads + 2 * spec.kv_heads) * d;
  std::vector<float> channel_gain(width, 1.0f);
  for (int h = 0; h < spec.kv_heads; ++h)
    for (int i = 0; i < 3; ++i) channel_gain[(spec.q_heads + h) * d + (rng() % d)] = 6.0f;
  p.qkv.resize(size_t(p.tokens) * width);
  for (size_t i = 0; i < p.qkv.size(); ++i) p.qkv[i] = bf16_from_float(normal(rng) * channel_gain[i % width]);
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < spec.seq_lens[b]; ++t) {
      p.positions.push_back(t);
      p.seq_index.push_back(b);
    }
  std::uniform_real_distribution<float> gain(0.3f, 3.0f);
  p.post_rope_k_scale.assign(size_t(spec.kv_heads) * d, 1.0f);
  for (int h = 0; h < spec.kv_heads; ++h)
    for (int i = 0; i < 4; ++i) {
      const int c = static_cast<int>(rng() % (d / 2));
      p.post_rope_k_scale[h * d + c] = p.post_rope_k_scale[h * d + c + d / 2] = gain(rng);
    }

  // Cache bytes start as random garbage: every byte the attention reads must have been written.
  std::uniform_int_distribution<int> byte(0, 255);
  auto garbage = [&](auto& vec, size_t n) {
    vec.resize(n);
    for (auto& x : vec) x = static_cast<std::remove_reference_t<decltype(x)>>(byte(rng));
  };
  garbage(p.k, p.layout.data_bytes());
  garbage(p.v, p.layout.data_bytes());
  garbage(p.k_scale, p.layout.scale_count());
  garbage(p.v_scale, p.layout.scale_count());
  p.q_all.assign(size_t(p.tokens) * spec.q_heads * d, 0);
  p.q_scale_all.assign(size_t(p.tokens) * spec.q_heads, 0);

  p.query_start.push_back(0);
  for (int b = 0; b < batch; ++b) {
    p.query_start.push_back(p.query_start.back() + spec.q_lens[b]);
    p.max_query_len = std::max(p.max_query_len, spec.q_lens[b]);
  }
  p.total_queries = p.query_start.back();
  return p;
}

// Copies the quantized rows of each sequence's last q_len tokens into the query arrays.
inline void gather_queries(HostProblem& p) {
  const size_t row = size_t(p.spec.q_heads) * p.spec.head_dim;
  p.q.assign(size_t(p.total_queries) * row, 0);
  p.q_scale.assign(size_t(p.total_queries) * p.spec.q_heads, 0);
  p.out.assign(size_t(p.total_queries) * row, 0xFFFF);  // NaN poison
  int first_token = 0;
  for (size_t b = 0; b < p.seq_lens.size(); ++b) {
    const int nq = p.query_start[b + 1] - p.query_start[b];
    const int src = first_token + p.seq_lens[b] - nq;
    std::copy_n(p.q_all.begin() + src * row, nq * row, p.q.begin() + p.query_start[b] * row);
    std::copy_n(p.q_scale_all.begin() + size_t(src) * p.spec.q_heads, size_t(nq) * p.spec.q_heads,
                p.q_scale.begin() + size_t(p.query_start[b]) * p.spec.q_heads);
    first_token += p.seq_lens[b];
  }
}

struct ErrorStats {
  double max_abs = 0.0, rel_l2 = 0.0, ref_max = 0.0;
  bool finite = true;
};

inline ErrorStats compare(const std::vector<uint16_t>& out_bf16, const std::vector<double>& ref, size_t offset) {
  ErrorStats s;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = bf16_to_float(out_bf16[offset + i]);
    if (!std::isfinite(o)) s.finite = false;
    s.max_abs = std::max(s.max_abs, std::fabs(o - ref[i]));
    s.ref_max = std::max(s.ref_max, std::fabs(ref[i]));
    num += (o - ref[i]) * (o - ref[i]);
    den += ref[i] * ref[i];
  }
  s.rel_l2 = std::sqrt(num / std::max(den, 1e-300));
  return s;
}

}  // namespace fireq::attention::testing
