// A small random Llama model for the quantizer's tests (GQA, head_dim 16, K a multiple of 64).
#pragma once

#include <random>

#include "fireq/model.h"

namespace fireq::testing {

inline FloatTensor random_tensor(std::vector<int64_t> shape, double stddev, std::mt19937& rng, double mean = 0) {
  FloatTensor t;
  t.shape = std::move(shape);
  std::normal_distribution<float> normal(static_cast<float>(mean), static_cast<float>(stddev));
  t.data.resize(static_cast<size_t>(t.numel()));
  for (float& v : t.data) v = normal(rng);
  return t;
}

inline LlamaWeights tiny_llama(uint32_t seed, int layers = 2) {
  std::mt19937 rng(seed);
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_position_embeddings = 256;
  c.rope_theta = 10000;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  w.tok_embeddings = random_tensor({c.vocab_size, c.hidden_size}, 1.0, rng);
  w.final_norm = random_tensor({c.hidden_size}, 0.1, rng, 1.0);
  for (int l = 0; l < layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = random_tensor({c.hidden_size}, 0.1, rng, 1.0);
    L.ffn_norm = random_tensor({c.hidden_size}, 0.1, rng, 1.0);
    L.wq = random_tensor({c.q_dim(), c.hidden_size}, 0.15, rng);
    L.wk = random_tensor({c.kv_dim(), c.hidden_size}, 0.15, rng);
    L.wv = random_tensor({c.kv_dim(), c.hidden_size}, 0.15, rng);
    L.wo = random_tensor({c.hidden_size, c.q_dim()}, 0.15, rng);
    L.w_gate = random_tensor({c.intermediate_size, c.hidden_size}, 0.15, rng);
    L.w_up = random_tensor({c.intermediate_size, c.hidden_size}, 0.15, rng);
    L.w_down = random_tensor({c.hidden_size, c.intermediate_size}, 0.1, rng);
    // A few outlier key channels, as trained models have: what RoPE-aware scaling is for.
    for (int64_t col = 0; col < c.hidden_size; ++col) L.wk.data[3 * c.hidden_size + col] *= 8;
    w.layers.push_back(std::move(L));
  }
  w.source_description = "random test model";
  return w;
}

inline std::vector<int32_t> random_tokens(int n, int vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& v : t) v = u(rng);
  return t;
}

}  // namespace fireq::testing
