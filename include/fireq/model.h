// A Llama model's weights in float32, in Hugging Face layout: every linear weight is [out, in]
// row-major, RoPE pairs channel i with i + head_dim/2 (rotate_half). Loaders convert whatever the
// checkpoint holds (BF16/F16/F32 safetensors, GGUF blocks) into this one form; the CPU reference
// engine and the quantizer read it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "fireq/config.h"

namespace fireq {

struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
  bool empty() const { return data.empty(); }
};

struct LlamaLayerWeights {
  FloatTensor attn_norm;                 // [hidden]
  FloatTensor wq, wk, wv, wo;            // [q_dim, hidden], [kv_dim, hidden] x2, [hidden, q_dim]
  FloatTensor bq, bk, bv;                // qwen2 only, else empty
  FloatTensor ffn_norm;                  // [hidden]
  FloatTensor w_gate, w_up, w_down;      // [inter, hidden] x2, [hidden, inter]
};

struct LlamaWeights {
  LlamaConfig config;
  FloatTensor tok_embeddings;            // [vocab, hidden]
  std::vector<LlamaLayerWeights> layers;
  FloatTensor final_norm;                // [hidden]
  FloatTensor lm_head;                   // [vocab, hidden]; empty when tied to tok_embeddings
  std::string source_description;        // e.g. "GGUF Q4_1 (dequantized)", "safetensors BF16"

  const FloatTensor& output_weight() const { return lm_head.empty() ? tok_embeddings : lm_head; }
};

// Reports (step, total, what) while loading, for progress output.
using ProgressFn = std::function<void(int, int, const std::string&)>;

// Loads a Hugging Face checkpoint (directory with config.json and model.safetensors or a sharded
// model.safetensors.index.json) or a GGUF file (dequantized; llama.cpp's q/k row permutation undone).
LlamaWeights load_llama_weights(const std::filesystem::path& path, const ProgressFn& progress = {});

}  // namespace fireq
