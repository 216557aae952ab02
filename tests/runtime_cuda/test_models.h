// Model shapes and random weights shared by the CUDA engine's tests (BF16 path and FireQ path).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "fireq/model.h"
#include "fireq/numerics.h"

namespace fireq::testing {

// Llama-3-8B, or Llama-3-70B, shapes (memory-plan arithmetic only: never allocated in a test).
inline LlamaConfig llama3_shape(bool seventy_b) {
  LlamaConfig c;
  c.hidden_size = seventy_b ? 8192 : 4096;
  c.intermediate_size = seventy_b ? 28672 : 14336;
  c.num_hidden_layers = seventy_b ? 80 : 32;
  c.num_attention_heads = seventy_b ? 64 : 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  c.max_position_embeddings = 8192;
  return c;
}

// A few layers of SmolLM2's shapes (GQA 3, head_dim 64, tied embeddings), or of a Llama-3-like model
// (GQA 4, head_dim 128, llama3 RoPE scaling, untied lm_head).
inline LlamaConfig small_config(bool llama3_like, int layers, int vocab) {
  LlamaConfig c;
  if (llama3_like) {
    c.hidden_size = 512;
    c.intermediate_size = 1024;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 2;
    c.head_dim = 128;
    c.rope_theta = 500000.0;
    c.rope_scaling = {.enabled = true, .factor = 8.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                      .original_max_position_embeddings = 256};
  } else {
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_attention_heads = 9;
    c.num_key_value_heads = 3;
    c.head_dim = 64;
    c.rope_theta = 100000.0;
    c.tie_word_embeddings = true;
  }
  c.vocab_size = vocab;
  c.num_hidden_layers = layers;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  return c;
}

// Uniform in center +- spread; on the BF16 grid when asked (so that the BF16 path's only roundings
// are those of its activations).
inline FloatTensor random_tensor(std::vector<int64_t> shape, double center, double spread, std::mt19937& rng,
                                 bool bf16_grid) {
  FloatTensor t;
  t.shape = std::move(shape);
  std::uniform_real_distribution<double> u(-spread, spread);
  t.data.resize(t.numel());
  for (float& x : t.data) {
    x = static_cast<float>(center + u(rng));
    if (bf16_grid) x = round_to_bf16(x);
  }
  return t;
}

// Random float weights of `c`: linears ~ U(+-1.7/sqrt(in)), norms ~ U(1 +- 0.3), embeddings ~ U(+-1).
inline LlamaWeights random_llama_weights(const LlamaConfig& c, uint32_t seed, bool bf16_grid) {
  std::mt19937 rng(seed);
  LlamaWeights w;
  w.config = c;
  const int64_t h = c.hidden_size, i = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  auto tensor = [&](std::vector<int64_t> shape, double center, double spread) {
    return random_tensor(std::move(shape), center, spread, rng, bf16_grid);
  };
  auto linear = [&](int64_t out, int64_t in) { return tensor({out, in}, 0, 1.7 / std::sqrt(in)); };
  w.tok_embeddings = tensor({c.vocab_size, h}, 0, 1.0);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LlamaLayerWeights L;
    L.attn_norm = tensor({h}, 1.0, 0.3);
    L.wq = linear(q, h);
    L.wk = linear(kv, h);
    L.wv = linear(kv, h);
    L.wo = linear(h, q);
    L.ffn_norm = tensor({h}, 1.0, 0.3);
    L.w_gate = linear(i, h);
    L.w_up = linear(i, h);
    L.w_down = linear(h, i);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = tensor({h}, 1.0, 0.3);
  if (!c.tie_word_embeddings) w.lm_head = linear(c.vocab_size, h);
  return w;
}

inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = u(rng);
  return t;
}

}  // namespace fireq::testing
