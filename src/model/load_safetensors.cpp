// Hugging Face checkpoint (config.json + model.safetensors or sharded index) -> LlamaWeights.
// HF tensors are already in the layout LlamaWeights uses; they are only widened to float32.
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fireq/error.h"
#include "fireq/model.h"
#include "fireq/safetensors.h"
#include "loaders.h"

namespace fireq::model {
namespace {

std::filesystem::path config_path_for(const std::filesystem::path& path) {
  const std::filesystem::path dir = std::filesystem::is_directory(path) ? path : path.parent_path();
  const std::filesystem::path config = dir / "config.json";
  if (!std::filesystem::exists(config)) fail(path.string(), ": no config.json in ", dir.string());
  return config;
}

// Quantized checkpoints (FireQ's own included) hold packed integers that are not plain weights.
void refuse_quantized(const std::filesystem::path& config_path) {
  std::ifstream in(config_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("quantization_config")) {
    const auto& q = j["quantization_config"];
    const std::string method = q.is_object() && q.contains("quant_method") && q["quant_method"].is_string()
                                   ? q["quant_method"].get<std::string>()
                                   : "unknown";
    fail(config_path.string(), ": a quantized checkpoint (quant_method '", method,
         "'); load_llama_weights reads float checkpoints only");
  }
}

class SafetensorsLoader {
 public:
  explicit SafetensorsLoader(const std::filesystem::path& path) : checkpoint_(path) {}

  FloatTensor load(const std::string& name, const std::vector<int64_t>& expected_shape) {
    const TensorView& t = checkpoint_.at(name);
    const std::string where = t.file.string() + ": tensor '" + name + "'";
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(where, ": dtype ", dtype_name(t.dtype), " is not a float checkpoint dtype (F32, F16, BF16)");
    check_shape(t.shape, expected_shape, where);
    dtypes_.insert(std::string(dtype_name(t.dtype)));
    return {expected_shape, tensor_to_float(t)};
  }

  bool has(const std::string& name) const { return checkpoint_.find(name) != nullptr; }

  std::string description() const {
    std::string out = "safetensors ";
    for (const std::string& d : dtypes_) out += (out.back() == ' ' ? "" : "/") + d;
    const size_t shards = checkpoint_.shards().size();
    if (shards > 1) out += " (" + std::to_string(shards) + " shards)";
    return out;
  }

 private:
  SafetensorsCheckpoint checkpoint_;
  std::set<std::string> dtypes_;
};

}  // namespace

LlamaWeights load_safetensors_weights(const std::filesystem::path& path, const ProgressFn& progress) {
  const std::filesystem::path config_path = config_path_for(path);
  refuse_quantized(config_path);
  LlamaWeights w;
  w.config = load_llama_config(config_path);
  const LlamaConfig& c = w.config;
  SafetensorsLoader loader(path);
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int total = c.num_hidden_layers + 2;
  auto report = [&](int step, const std::string& what) {
    if (progress) progress(step, total, what);
  };

  report(0, "token embeddings");
  w.tok_embeddings = loader.load("model.embed_tokens.weight", {c.vocab_size, hidden});
  w.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    report(i + 1, "layer " + std::to_string(i));
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaLayerWeights& l = w.layers[i];
    l.attn_norm = loader.load(p + "input_layernorm.weight", {hidden});
    l.wq = loader.load(p + "self_attn.q_proj.weight", {c.q_dim(), hidden});
    l.wk = loader.load(p + "self_attn.k_proj.weight", {c.kv_dim(), hidden});
    l.wv = loader.load(p + "self_attn.v_proj.weight", {c.kv_dim(), hidden});
    l.wo = loader.load(p + "self_attn.o_proj.weight", {hidden, c.q_dim()});
    if (c.attention_bias) {
      l.bq = loader.load(p + "self_attn.q_proj.bias", {c.q_dim()});
      l.bk = loader.load(p + "self_attn.k_proj.bias", {c.kv_dim()});
      l.bv = loader.load(p + "self_attn.v_proj.bias", {c.kv_dim()});
    }
    l.ffn_norm = loader.load(p + "post_attention_layernorm.weight", {hidden});
    l.w_gate = loader.load(p + "mlp.gate_proj.weight", {inter, hidden});
    l.w_up = loader.load(p + "mlp.up_proj.weight", {inter, hidden});
    l.w_down = loader.load(p + "mlp.down_proj.weight", {hidden, inter});
  }
  report(total - 1, "output");
  w.final_norm = loader.load("model.norm.weight", {hidden});
  // Tied checkpoints sometimes still store lm_head.weight (a copy); the embeddings are used.
  if (!c.tie_word_embeddings) w.lm_head = loader.load("lm_head.weight", {c.vocab_size, hidden});
  report(total, "done");
  w.source_description = loader.description();
  return w;
}

}  // namespace fireq::model
