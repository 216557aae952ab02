// The FireQ checkpoint (docs/FORMAT.md): safetensors shards + config.json with a
// quantization_config + the tokenizer, written into a temporary directory renamed at the end.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fireq/config.h"
#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/numerics.h"
#include "fireq/quant.h"
#include "fireq/safetensors.h"

namespace fireq {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

const char* kQuantMethod = "fireq";

std::string layer_prefix(size_t l) { return "model.layers." + std::to_string(l) + "."; }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

// Tensors to write, with the buffers they point into.
class TensorList {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::span<const std::byte> data) {
    tensors_.push_back({name, dtype, std::move(shape), data});
  }
  void add_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    add(name, DType::F32, std::move(shape), bytes_of(v));
  }
  void add_bf16(const std::string& name, const FloatTensor& t) {
    auto& bits = own<uint16_t>(t.data.size());
    for (size_t i = 0; i < t.data.size(); ++i) bits[i] = bf16_from_float(t.data[i]);
    add(name, DType::BF16, t.shape, bytes_of(bits));
  }
  template <typename T>
  std::vector<T>& own(size_t n) {
    buffers_.push_back(std::make_shared<Buffer<T>>(n));
    return static_cast<Buffer<T>&>(*buffers_.back()).data;
  }
  const std::vector<TensorToWrite>& tensors() const { return tensors_; }

 private:
  struct AnyBuffer {
    virtual ~AnyBuffer() = default;
  };
  template <typename T>
  struct Buffer : AnyBuffer {
    explicit Buffer(size_t n) : data(n) {}
    std::vector<T> data;
  };
  std::vector<std::shared_ptr<AnyBuffer>> buffers_;
  std::vector<TensorToWrite> tensors_;
};

void add_linear(TensorList& list, const std::string& name, const QuantizedLinear& q) {
  if (!q.is_int4) {
    list.add_bf16(name + ".weight", q.dense);
    if (!q.dense_bias.empty()) list.add_bf16(name + ".bias", q.dense_bias);
    return;
  }
  const Int4Linear& w = q.int4;
  list.add(name + ".qweight", DType::U8, {w.out_features, w.padded_in_features / 2}, bytes_of(w.packed));
  if (w.scale_dtype == ScaleDType::kFp8E4M3)
    list.add(name + ".scales", DType::F8_E4M3, {w.out_features, w.groups_per_row()}, bytes_of(w.scales_fp8));
  else
    list.add(name + ".scales", DType::BF16, {w.out_features, w.groups_per_row()}, bytes_of(w.scales_bf16));
  auto& inv = list.own<float>(1);
  inv[0] = w.inv_tensor_scale();
  list.add(name + ".inv_tensor_scale", DType::F32, {1}, bytes_of(inv));
  if (!w.bias.empty()) list.add_f32(name + ".bias", {w.out_features}, w.bias);
}

TensorList checkpoint_tensors(const QuantizedModel& m) {
  const LlamaConfig& c = m.config;
  TensorList list;
  list.add_bf16("model.embed_tokens.weight", m.tok_embeddings);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const QuantizedLayer& q = m.layers[l];
    const std::string p = layer_prefix(l);
    list.add_bf16(p + "input_layernorm.weight", q.attn_norm);
    list.add_bf16(p + "post_attention_layernorm.weight", q.ffn_norm);
    for (int s = 0; s < kLinearsPerLayer; ++s)
      add_linear(list, p + linear_hf_name(static_cast<LinearSite>(s)), q.linears[s]);
    if (!q.post_rope_scale.empty()) {
      list.add_f32(p + "self_attn.post_rope_scale", {c.num_key_value_heads, c.head_dim}, q.post_rope_scale);
      const int64_t per_head = static_cast<int64_t>(q.post_rope_channels.size()) / c.num_key_value_heads;
      list.add(p + "self_attn.post_rope_channels", DType::I32, {c.num_key_value_heads, per_head},
               bytes_of(q.post_rope_channels));
    }
    const std::pair<const char*, const std::vector<float>*> stats[] = {
        {"self_attn.qkv_input_absmax", &q.qkv_input_absmax},
        {"self_attn.o_proj.input_absmax", &q.o_input_absmax},
        {"mlp.gate_up_input_absmax", &q.gate_up_input_absmax},
        {"mlp.down_proj.input_absmax", &q.down_input_absmax}};
    for (const auto& [name, values] : stats)
      if (!values->empty()) list.add_f32(p + name, {static_cast<int64_t>(values->size())}, *values);
  }
  list.add_bf16("model.norm.weight", m.final_norm);
  if (!m.lm_head.empty()) list.add_bf16("lm_head.weight", m.lm_head);
  return list;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer of a GGUF source: its tokenizer.* metadata copied into a tensor-less GGUF file,
// which load_tokenizer reads like any GGUF.
class GgufWriter {
 public:
  void magic() { raw("GGUF", 4); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void value(const GgufValue& v, GgufType type) {
    switch (type) {
      case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL:
        return scalar_int(v, 1);
      case GgufType::UINT16: case GgufType::INT16: return scalar_int(v, 2);
      case GgufType::UINT32: case GgufType::INT32: return scalar_int(v, 4);
      case GgufType::UINT64: case GgufType::INT64: return scalar_int(v, 8);
      case GgufType::FLOAT32: {
        const float f = static_cast<float>(std::get<double>(v.value));
        return raw(&f, 4);
      }
      case GgufType::FLOAT64: return raw(&std::get<double>(v.value), 8);
      case GgufType::STRING: return str(std::get<std::string>(v.value));
      case GgufType::ARRAY: {
        const auto& items = std::get<GgufValue::Array>(v.value);
        u32(static_cast<uint32_t>(v.element_type));
        u64(items.size());
        for (const GgufValue& item : items) value(item, v.element_type);
        return;
      }
    }
  }
  const std::string& bytes() const { return out_; }

 private:
  void raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void scalar_int(const GgufValue& v, size_t width) {
    const int64_t i = std::holds_alternative<bool>(v.value) ? std::get<bool>(v.value) : std::get<int64_t>(v.value);
    raw(&i, width);  // little-endian: the low bytes
  }
  std::string out_;
};

void write_gguf_tokenizer(const fs::path& gguf_path, const fs::path& out) {
  const GgufFile gguf(gguf_path);
  std::vector<const std::pair<std::string, GgufValue>*> keep;
  for (const auto& entry : gguf.metadata())
    if (entry.first.rfind("tokenizer.", 0) == 0 || entry.first == "general.architecture") keep.push_back(&entry);
  GgufWriter w;
  w.magic();
  w.u32(3);
  w.u64(0);  // tensors
  w.u64(keep.size());
  for (const auto* entry : keep) {
    w.str(entry->first);
    w.u32(static_cast<uint32_t>(entry->second.type));
    w.value(entry->second, entry->second.type);
  }
  write_file_atomic(out, std::as_bytes(std::span(w.bytes().data(), w.bytes().size())));
}


// ---------------------------------------------------------------------------------------------
// config.json

ordered_json source_config_json(const QuantizedModel& model, const fs::path& source) {
  const fs::path hf_config = source / "config.json";
  if (fs::is_directory(source) && fs::is_regular_file(hf_config))
    return ordered_json::parse(read_text(hf_config));  // keeps every HF field as it was
  return ordered_json::parse(llama_config_json(model.config));
}

ordered_json quantization_config(const QuantizedModel& m, const fs::path& source) {
  const QuantRecipe& r = m.recipe;
  ordered_json q;
  q["quant_method"] = kQuantMethod;
  q["format_version"] = kFireqFormatVersion;
  q["weights"] = r.quantize_weights ? "int4" : "bf16";
  q["group_size"] = r.group_size;
  q["weight_scale_dtype"] = r.weight_scale_dtype == ScaleDType::kFp8E4M3 ? "F8_E4M3" : "BF16";
  q["activations"] = r.activations == ActivationDType::kFp8E4M3PerToken ? "fp8_e4m3_per_token" : "bf16";
  q["queries"] = r.fp8_queries ? "fp8_e4m3_per_token_head" : "bf16";
  q["kv_cache"] = r.quantize_kv() ? "int4" : "bf16";
  q["kv_scale_dtype"] = r.kv_scale_dtype == ScaleDType::kFp8E4M3 ? "F8_E4M3" : "BF16";
  q["post_rope_scaling"] = r.post_rope;
  q["skip_layers"] = r.skip_layers;
  q["source"] = source.filename().string();
  q["source_description"] = m.source_description;
  q["recipe"] = ordered_json::parse(recipe_to_json(r));
  return q;
}

void copy_tokenizer(const fs::path& source, const fs::path& dir) {
  if (fs::is_directory(source)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                             "special_tokens_map.json", "generation_config.json"})
      if (fs::is_regular_file(source / name)) fs::copy_file(source / name, dir / name);
  } else if (source.extension() == ".gguf") {
    write_gguf_tokenizer(source, dir / "tokenizer.gguf");
  }
}

uint64_t directory_bytes(const fs::path& dir) {
  uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) total += entry.file_size();
  return total;
}

}  // namespace

std::string llama_config_json(const LlamaConfig& c) {
  ordered_json j;
  const bool qwen = c.architecture == "qwen2";
  j["architectures"] = {qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = c.architecture;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.enabled)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (!qwen) j["attention_bias"] = c.attention_bias;
  j["hidden_act"] = "silu";
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  j["torch_dtype"] = "bfloat16";
  return j.dump(2);
}

uint64_t save_quantized_checkpoint(const QuantizedModel& model, const fs::path& dir, const SaveOptions& options) {
  if (fs::exists(dir)) fail(dir.string(), ": already exists (refusing to overwrite a checkpoint)");
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  if (!fs::is_directory(parent)) fail(parent.string(), ": the output's parent directory does not exist");
  std::string tmp_name = dir.filename().string();
  tmp_name.append(".partial-").append(std::to_string(::getpid()));
  const fs::path tmp = parent / ("." + tmp_name);
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  try {
    const TensorList tensors = checkpoint_tensors(model);
    const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"quant_method", kQuantMethod},
                                                         {"format_version", std::to_string(kFireqFormatVersion)}};
    write_safetensors_checkpoint(tmp, tensors.tensors(), metadata, options.max_shard_bytes);
    ordered_json config = source_config_json(model, options.source);
    config["quantization_config"] = quantization_config(model, options.source);
    const std::string config_text = config.dump(2) + "\n";
    write_file_atomic(tmp / "config.json", std::as_bytes(std::span(config_text.data(), config_text.size())));
    const std::string recipe_text = recipe_to_yaml(model.recipe);
    write_file_atomic(tmp / "recipe.yaml", std::as_bytes(std::span(recipe_text.data(), recipe_text.size())));
    copy_tokenizer(options.source, tmp);
    const uint64_t bytes = directory_bytes(tmp);
    fs::rename(tmp, dir);
    return bytes;
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
}

bool is_fireq_checkpoint(const fs::path& path) {
  const fs::path config = path / "config.json";
  if (!fs::is_directory(path) || !fs::is_regular_file(config)) return false;
  const ordered_json j = ordered_json::parse(read_text(config), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("quantization_config")) return false;
  const ordered_json& q = j["quantization_config"];
  return q.is_object() && q.value("quant_method", "") == kQuantMethod;
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

class CheckpointReader {
 public:
  explicit CheckpointReader(const fs::path& dir) : dir_(dir), st_(dir) {}

  const TensorView& get(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
    const TensorView* t = st_.find(name);
    if (!t) fail(dir_.string(), ": tensor ", name, " is missing");
    if (t->dtype != dtype)
      fail(t->file.string(), ": tensor ", name, " is ", dtype_name(t->dtype), ", expected ", dtype_name(dtype));
    if (t->shape != shape) fail(t->file.string(), ": tensor ", name, " has shape ", shape_text(t->shape),
                                ", expected ", shape_text(shape));
    return *t;
  }
  bool has(const std::string& name) const { return st_.find(name) != nullptr; }

  FloatTensor bf16(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView& t = get(name, DType::BF16, shape);
    FloatTensor out;
    out.shape = shape;
    out.data = tensor_to_float(t);
    return out;
  }
  std::vector<float> f32(const std::string& name, const std::vector<int64_t>& shape) const {
    return tensor_to_float(get(name, DType::F32, shape));
  }
  template <typename T>
  std::vector<T> raw(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
    const TensorView& t = get(name, dtype, shape);
    std::vector<T> out(t.data.size() / sizeof(T));
    std::memcpy(out.data(), t.data.data(), t.data.size());
    return out;
  }
  const fs::path& dir() const { return dir_; }

 private:
  static std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
  fs::path dir_;
  SafetensorsCheckpoint st_;
};

QuantizedLinear read_linear(const CheckpointReader& r, const std::string& name, int64_t out, int64_t in,
                            bool has_bias, const QuantRecipe& recipe) {
  QuantizedLinear q;
  q.is_int4 = r.has(name + ".qweight");
  if (!q.is_int4) {
    q.dense = r.bf16(name + ".weight", {out, in});
    if (has_bias) q.dense_bias = r.bf16(name + ".bias", {out});
    return q;
  }
  Int4Linear& w = q.int4;
  w.out_features = out;
  w.in_features = in;
  w.group_size = recipe.group_size;
  w.scale_dtype = recipe.weight_scale_dtype;
  w.padded_in_features = (in + w.group_size - 1) / w.group_size * w.group_size;
  if (w.padded_in_features != in && recipe.k_remainder == KRemainder::kRefuse)
    fail(r.dir().string(), ": tensor ", name, ".qweight: K = ", in, " is not a multiple of group_size ",
         w.group_size, " but the recipe refuses padding");
  w.packed = r.raw<uint8_t>(name + ".qweight", DType::U8, {out, w.padded_in_features / 2});
  const std::vector<int64_t> scale_shape = {out, w.groups_per_row()};
  if (w.scale_dtype == ScaleDType::kFp8E4M3) w.scales_fp8 = r.raw<uint8_t>(name + ".scales", DType::F8_E4M3, scale_shape);
  else w.scales_bf16 = r.raw<uint16_t>(name + ".scales", DType::BF16, scale_shape);
  const float inv = r.f32(name + ".inv_tensor_scale", {1})[0];
  int exponent = 0;
  if (!(inv > 0) || std::frexp(inv, &exponent) != 0.5f || 1 - exponent < 0 || 1 - exponent > 14)
    fail(r.dir().string(), ": tensor ", name, ".inv_tensor_scale = ", inv, " is not 2^-e with e in 0..14");
  w.tensor_scale_exponent = 1 - exponent;
  if (has_bias) w.bias = r.f32(name + ".bias", {out});
  return q;
}

}  // namespace

QuantizedModel load_quantized_checkpoint(const fs::path& dir) {
  const fs::path config_path = dir / "config.json";
  if (!fs::is_regular_file(config_path)) fail(dir.string(), ": no config.json (not a checkpoint directory)");
  const std::string text = read_text(config_path);
  ordered_json j;
  try {
    j = ordered_json::parse(text);
  } catch (const std::exception& e) {
    fail(config_path.string(), ": not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("quantization_config") || !j["quantization_config"].is_object() ||
      j["quantization_config"].value("quant_method", "") != kQuantMethod)
    fail(config_path.string(), ": quantization_config.quant_method is not \"fireq\"");
  const ordered_json& qc = j["quantization_config"];
  if (qc.value("format_version", -1) != kFireqFormatVersion)
    fail(config_path.string(), ": quantization_config.format_version ", qc.value("format_version", -1),
         " is not supported (this build reads ", kFireqFormatVersion, ")");
  if (!qc.contains("recipe")) fail(config_path.string(), ": quantization_config.recipe is missing");

  QuantizedModel m;
  m.config = parse_llama_config(text, config_path.string());
  m.recipe = parse_recipe(qc["recipe"].dump(), config_path.string() + " quantization_config.recipe");
  m.source_description = qc.value("source_description", "");
  const LlamaConfig& c = m.config;
  const CheckpointReader r(dir);
  m.tok_embeddings = r.bf16("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  m.final_norm = r.bf16("model.norm.weight", {c.hidden_size});
  if (!c.tie_word_embeddings) m.lm_head = r.bf16("lm_head.weight", {c.vocab_size, c.hidden_size});
  const bool bias = c.attention_bias || c.architecture == "qwen2";
  const int64_t shapes[kLinearsPerLayer][2] = {
      {c.q_dim(), c.hidden_size},         {c.kv_dim(), c.hidden_size},        {c.kv_dim(), c.hidden_size},
      {c.hidden_size, c.q_dim()},         {c.intermediate_size, c.hidden_size}, {c.intermediate_size, c.hidden_size},
      {c.hidden_size, c.intermediate_size}};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    QuantizedLayer q;
    q.quantized = !m.recipe.skips_layer(l);
    q.attn_norm = r.bf16(p + "input_layernorm.weight", {c.hidden_size});
    q.ffn_norm = r.bf16(p + "post_attention_layernorm.weight", {c.hidden_size});
    for (int s = 0; s < kLinearsPerLayer; ++s) {
      const auto site = static_cast<LinearSite>(s);
      q.linears[s] = read_linear(r, p + linear_hf_name(site), shapes[s][0], shapes[s][1], bias && s < 3, m.recipe);
      if (q.linears[s].is_int4 != (q.quantized && m.recipe.quantize_weights))
        fail(dir.string(), ": ", p, linear_hf_name(site), " is ", q.linears[s].is_int4 ? "INT4" : "BF16",
             ", which contradicts the recipe");
    }
    if (q.quantized && m.recipe.post_rope) {
      q.post_rope_scale = r.f32(p + "self_attn.post_rope_scale", {c.num_key_value_heads, c.head_dim});
      q.post_rope_channels = r.raw<int32_t>(p + "self_attn.post_rope_channels", DType::I32,
                                            {c.num_key_value_heads, 2 * m.recipe.post_rope_top_k});
      for (const float s : q.post_rope_scale)
        if (!(s > 0) || !std::isfinite(s))
          fail(dir.string(), ": tensor ", p, "self_attn.post_rope_scale holds ", s, " (must be positive)");
    }
    m.layers.push_back(std::move(q));
  }
  return m;
}

}  // namespace fireq
