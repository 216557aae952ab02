#include <algorithm>
#include <cmath>
#include <numbers>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fireq/config.h"
#include "fireq/error.h"
#include "fireq/gguf.h"

namespace fireq {
namespace {

using nlohmann::json;

// Typed field access with errors naming the file and the field.
class Fields {
 public:
  Fields(const json& object, const std::string& source) : j_(object), source_(source) {}

  bool present(const char* name) const { return j_.contains(name) && !j_[name].is_null(); }

  int integer(const char* name) const {
    if (!present(name)) fail(source_, ": missing required field '", name, "'");
    return integer_value(j_[name], name);
  }
  int integer(const char* name, int fallback) const { return present(name) ? integer(name) : fallback; }

  double number(const char* name, double fallback) const {
    if (!present(name)) return fallback;
    if (!j_[name].is_number()) fail(source_, ": field '", name, "' must be a number, got ", j_[name].dump());
    return j_[name].get<double>();
  }

  bool boolean(const char* name, bool fallback) const {
    if (!present(name)) return fallback;
    if (!j_[name].is_boolean()) fail(source_, ": field '", name, "' must be true or false, got ", j_[name].dump());
    return j_[name].get<bool>();
  }

  std::string string(const char* name, const std::string& fallback) const {
    if (!present(name)) return fallback;
    if (!j_[name].is_string()) fail(source_, ": field '", name, "' must be a string, got ", j_[name].dump());
    return j_[name].get<std::string>();
  }

  int integer_value(const json& v, const char* name) const {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
      fail(source_, ": field '", name, "' must be an integer, got ", v.dump());
    return v.get<int>();
  }

 private:
  const json& j_;
  const std::string& source_;
};

std::string detect_architecture(const json& j, const std::string& source) {
  const Fields f(j, source);
  std::string model_type = f.string("model_type", "");
  if (model_type.empty() && j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty() && j["architectures"][0].is_string()) {
    const std::string arch = j["architectures"][0].get<std::string>();
    if (arch == "LlamaForCausalLM") model_type = "llama";
    else if (arch == "Qwen2ForCausalLM") model_type = "qwen2";
    else fail(source, ": unsupported architecture '", arch, "' (supported: LlamaForCausalLM, Qwen2ForCausalLM)");
  }
  if (model_type.empty()) fail(source, ": neither 'model_type' nor 'architectures' says what model this is");
  if (model_type != "llama" && model_type != "qwen2")
    fail(source, ": unsupported model_type '", model_type, "' (supported: llama, qwen2)");
  return model_type;
}

RopeScalingLlama3 parse_rope_scaling(const json& j, const std::string& source) {
  RopeScalingLlama3 scaling;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return scaling;
  const json& rs = j["rope_scaling"];
  if (!rs.is_object()) fail(source, ": 'rope_scaling' must be an object or null");
  const Fields f(rs, source);
  // transformers accepts the older spelling "type" for "rope_type".
  const std::string type = f.present("rope_type") ? f.string("rope_type", "") : f.string("type", "");
  if (type == "default" || type.empty()) return scaling;
  if (type != "llama3")
    fail(source, ": rope_scaling type '", type, "' is not supported (only 'llama3' and 'default')");
  scaling.enabled = true;
  scaling.factor = f.number("factor", 0.0);
  scaling.low_freq_factor = f.number("low_freq_factor", 0.0);
  scaling.high_freq_factor = f.number("high_freq_factor", 0.0);
  scaling.original_max_position_embeddings = f.integer("original_max_position_embeddings", 0);
  if (scaling.factor <= 0 || scaling.low_freq_factor <= 0 ||
      scaling.high_freq_factor <= scaling.low_freq_factor || scaling.original_max_position_embeddings <= 0)
    fail(source, ": rope_scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                 "original_max_position_embeddings > 0, got ", rs.dump());
  return scaling;
}

void parse_eos(const json& j, const std::string& source, LlamaConfig& config) {
  if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) return;
  const json& eos = j["eos_token_id"];
  const Fields f(j, source);
  if (eos.is_array()) {
    for (const json& id : eos) config.eos_token_ids.push_back(f.integer_value(id, "eos_token_id"));
  } else {
    config.eos_token_ids.push_back(f.integer_value(eos, "eos_token_id"));
  }
  if (!config.eos_token_ids.empty()) config.eos_token_id = config.eos_token_ids.front();
}

// The llama3 RoPE divisor of one frequency, as transformers computes it.
double llama3_divisor(const RopeScalingLlama3& s, double frequency) {
  const double wavelength = 2.0 * std::numbers::pi / frequency;
  const double original = s.original_max_position_embeddings;
  if (wavelength < original / s.high_freq_factor) return 1.0;
  if (wavelength > original / s.low_freq_factor) return s.factor;
  const double smooth = (original / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return 1.0 / ((1.0 - smooth) / s.factor + smooth);
}

// llama.cpp stores Llama 3.1 RoPE scaling as one divisor per frequency (rope_freqs.weight): 1 for
// short wavelengths, `factor` for long ones, 1 / ((1 - s) / factor + s) between, where
// s = (L / wavelength - low) / (high - low) is linear in 1 / wavelength. Only L/low and L/high
// matter, so L is set to Llama 3.1's 8192 and low/high come from the line through the transitional
// frequencies; the recovered parameters must then reproduce every stored divisor.
RopeScalingLlama3 llama3_scaling_from_rope_freqs(const GgufTensor& tensor, double theta, int head_dim,
                                                 const std::string& source) {
  const std::string where = source + ": tensor 'rope_freqs.weight'";
  if (tensor.numel() != head_dim / 2) fail(where, ": ", tensor.numel(), " factors, expected head_dim/2 = ", head_dim / 2);
  const std::vector<float> divisors = dequantize(tensor);
  const auto frequency = [&](size_t i) { return std::pow(theta, -2.0 * static_cast<double>(i) / head_dim); };
  RopeScalingLlama3 s;
  s.factor = *std::max_element(divisors.begin(), divisors.end());
  if (s.factor <= 1.0 + 1e-6) return s;  // all ones: no scaling

  constexpr double kTolerance = 1e-4;
  std::vector<std::pair<double, double>> line;  // (1 / wavelength, s)
  for (size_t i = 0; i < divisors.size(); ++i) {
    if (divisors[i] <= 1.0 + kTolerance || divisors[i] >= s.factor - kTolerance) continue;
    const double smooth = (1.0 / divisors[i] - 1.0 / s.factor) / (1.0 - 1.0 / s.factor);
    line.emplace_back(frequency(i) / (2.0 * std::numbers::pi), smooth);
  }
  if (line.size() < 2)
    fail(where, ": too few transitional frequencies to recover the llama3 rope scaling parameters");
  const auto [x0, s0] = line.front();
  const auto [x1, s1] = line.back();
  const double slope = (s1 - s0) / (x1 - x0), intercept = s0 - slope * x0;
  if (!(slope > 0) || !std::isfinite(slope))  // s grows with frequency in every llama3 table
    fail(where, ": the transitional factors do not follow the llama3 rope scaling pattern");
  s.enabled = true;
  s.original_max_position_embeddings = 8192;
  s.low_freq_factor = -intercept * s.original_max_position_embeddings / slope;
  s.high_freq_factor = s.low_freq_factor + s.original_max_position_embeddings / slope;
  for (size_t i = 0; i < divisors.size(); ++i)
    if (!(std::abs(llama3_divisor(s, frequency(i)) - divisors[i]) <= 1e-3 * divisors[i]))
      fail(where, ": factor ", i, " = ", divisors[i], " does not follow the llama3 rope scaling pattern");
  return s;
}

}  // namespace

void validate_llama_config(const LlamaConfig& c, const std::string& source) {
  auto positive = [&](int value, const char* name) {
    if (value <= 0) fail(source, ": ", name, " must be positive, got ", value);
  };
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.num_key_value_heads, "num_key_value_heads");
  positive(c.head_dim, "head_dim");
  positive(c.vocab_size, "vocab_size");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(source, ": num_attention_heads ", c.num_attention_heads,
         " is not a multiple of num_key_value_heads ", c.num_key_value_heads);
  if (c.head_dim % 2 != 0) fail(source, ": head_dim ", c.head_dim, " must be even for RoPE");
  if (!(c.rms_norm_eps > 0)) fail(source, ": rms_norm_eps must be positive, got ", c.rms_norm_eps);
  if (!(c.rope_theta > 0)) fail(source, ": rope_theta must be positive, got ", c.rope_theta);
}

LlamaConfig parse_llama_config(std::string_view json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    fail(source, ": not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(source, ": not a JSON object");
  const Fields f(j, source);

  LlamaConfig c;
  c.architecture = detect_architecture(j, source);
  c.attention_bias = c.architecture == "qwen2" || f.boolean("attention_bias", false);
  if (f.boolean("mlp_bias", false)) fail(source, ": mlp_bias = true is not supported");
  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") fail(source, ": hidden_act '", act, "' is not supported (only silu)");
  if (f.boolean("use_sliding_window", false))
    fail(source, ": use_sliding_window = true is not supported");

  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  c.head_dim = f.integer("head_dim", c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.vocab_size = f.integer("vocab_size");
  c.max_position_embeddings = f.integer("max_position_embeddings", 0);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  c.rope_theta = f.number("rope_theta", 10000.0);
  c.rope_scaling = parse_rope_scaling(j, source);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.bos_token_id = f.integer("bos_token_id", -1);
  parse_eos(j, source, c);
  validate_llama_config(c, source);
  return c;
}

LlamaConfig load_llama_config(const std::filesystem::path& config_json) {
  std::ifstream in(config_json, std::ios::binary);
  if (!in) fail(config_json.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_llama_config(text.str(), config_json.string());
}

LlamaConfig llama_config_from_gguf(const GgufFile& gguf) {
  const std::string source = gguf.path().string();
  LlamaConfig c;
  const std::string arch = gguf.get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2")
    fail(source, ": general.architecture '", arch, "' is not supported (supported: llama, qwen2)");
  c.architecture = arch;
  c.attention_bias = arch == "qwen2";
  const std::string p = arch + ".";
  auto as_int = [&](const std::string& key) { return static_cast<int>(gguf.get_int(key)); };

  c.hidden_size = as_int(p + "embedding_length");
  c.num_hidden_layers = as_int(p + "block_count");
  c.intermediate_size = as_int(p + "feed_forward_length");
  c.num_attention_heads = as_int(p + "attention.head_count");
  c.num_key_value_heads = static_cast<int>(gguf.get_int(p + "attention.head_count_kv", c.num_attention_heads));
  c.head_dim = static_cast<int>(gguf.get_int(
      p + "attention.key_length", c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0));
  c.rms_norm_eps = gguf.get_float(p + "attention.layer_norm_rms_epsilon");
  c.rope_theta = gguf.get_float(p + "rope.freq_base", 10000.0);
  c.max_position_embeddings = static_cast<int>(gguf.get_int(p + "context_length", 0));
  if (gguf.get_int(p + "expert_count", 0) > 0)
    fail(source, ": mixture-of-experts models (", p, "expert_count ", gguf.get_int(p + "expert_count"),
         ") are not supported");
  if (const int64_t rotary = gguf.get_int(p + "rope.dimension_count", c.head_dim); rotary != c.head_dim)
    fail(source, ": partial rotary embeddings (", p, "rope.dimension_count ", rotary, " of head_dim ",
         c.head_dim, ") are not supported");
  const std::string scaling = gguf.get_string(p + "rope.scaling.type", "none");
  if (scaling != "none")
    fail(source, ": ", p, "rope.scaling.type '", scaling, "' is not supported");
  if (const GgufTensor* freqs = gguf.find_tensor("rope_freqs.weight"))
    c.rope_scaling = llama3_scaling_from_rope_freqs(*freqs, c.rope_theta, c.head_dim, source);

  if (gguf.has(p + "vocab_size")) c.vocab_size = as_int(p + "vocab_size");
  else if (const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens"); tokens && tokens->is_array())
    c.vocab_size = static_cast<int>(std::get<GgufValue::Array>(tokens->value).size());
  else if (const GgufTensor* embd = gguf.find_tensor("token_embd.weight"); embd && embd->dims.size() == 2)
    c.vocab_size = static_cast<int>(embd->dims[1]);
  c.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  c.bos_token_id = static_cast<int>(gguf.get_int("tokenizer.ggml.bos_token_id", -1));
  c.eos_token_id = static_cast<int>(gguf.get_int("tokenizer.ggml.eos_token_id", -1));
  if (c.eos_token_id >= 0) c.eos_token_ids = {c.eos_token_id};
  validate_llama_config(c, source);
  return c;
}

}  // namespace fireq
