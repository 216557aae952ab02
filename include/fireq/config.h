// Llama-family model configuration, as read from a Hugging Face config.json or GGUF metadata.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fireq {

class GgufFile;

// Llama 3.1 style frequency scaling (config.json "rope_scaling": {"rope_type": "llama3", ...}).
struct RopeScalingLlama3 {
  bool enabled = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 1.0;
  int original_max_position_embeddings = 0;
};

struct LlamaConfig {
  std::string architecture = "llama";  // "llama" or "qwen2" (q/k/v biases)
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // defaults to hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScalingLlama3 rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // true for qwen2
  int bos_token_id = -1;
  int eos_token_id = -1;                 // the first one when config.json lists several
  std::vector<int> eos_token_ids;        // all of them (empty when unknown)

  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }
  int gqa_group() const { return num_attention_heads / num_key_value_heads; }
};

// Parses and validates config.json text; `source` names the file in error messages.
// Refuses unknown architectures and unsupported fields (e.g. other rope_scaling types).
LlamaConfig parse_llama_config(std::string_view json_text, const std::string& source);
LlamaConfig load_llama_config(const std::filesystem::path& config_json);

// From a GGUF file's llama.* (or qwen2.*) metadata; the vocabulary size from the token list.
LlamaConfig llama_config_from_gguf(const GgufFile& gguf);

// Checks the sizes are positive and consistent (heads divide, GQA group integral); fails naming
// `source`. The parsers call it.
void validate_llama_config(const LlamaConfig& config, const std::string& source);

}  // namespace fireq
