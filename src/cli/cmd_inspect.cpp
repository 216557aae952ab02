// fireq inspect PATH: what a checkpoint holds (GGUF file, .safetensors file, or HF directory):
// architecture, config, parameter count, tensors by dtype, size on disk, quantization.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "fireq/config.h"
#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/safetensors.h"

namespace fireq::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// One tensor as the summary sees it, whatever the container.
struct TensorEntry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};

struct DtypeTotal {
  int count = 0;
  uint64_t bytes = 0;
};

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

// Parameters of the architecture itself (independent of how the checkpoint stores them).
int64_t parameter_count(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), inter = c.intermediate_size;
  int64_t layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h;
  if (c.attention_bias) layer += q + 2 * kv;
  const int64_t embeddings = int64_t{c.vocab_size} * h;
  return embeddings + c.num_hidden_layers * layer + h + (c.tie_word_embeddings ? 0 : embeddings);
}

void print_config(const LlamaConfig& c) {
  std::printf("architecture: %s\n", c.architecture.c_str());
  std::printf("config:       %d layers, hidden %d, heads %d (kv %d, GQA %d:1, head_dim %d), "
              "intermediate %d, vocab %d\n",
              c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
              c.gqa_group(), c.head_dim, c.intermediate_size, c.vocab_size);
  std::printf("              rope_theta %g%s, rms_norm_eps %g, context %d, %s embeddings%s\n",
              c.rope_theta, c.rope_scaling.enabled ? " (llama3 scaling)" : "", c.rms_norm_eps,
              c.max_position_embeddings, c.tie_word_embeddings ? "tied" : "untied",
              c.attention_bias ? ", q/k/v biases" : "");
  std::printf("parameters:   %.1f M (%lld)\n", static_cast<double>(parameter_count(c)) / 1e6,
              static_cast<long long>(parameter_count(c)));
}

void print_tensor_summary(const std::vector<TensorEntry>& tensors, uint64_t disk_bytes) {
  std::map<std::string, DtypeTotal> by_dtype;
  int64_t elements = 0;
  for (const TensorEntry& t : tensors) {
    DtypeTotal& total = by_dtype[t.dtype];
    ++total.count;
    total.bytes += t.bytes;
    int64_t n = 1;
    for (const int64_t d : t.shape) n *= d;
    elements += n;
  }
  std::printf("tensors:      %zu (%lld stored elements)\n", tensors.size(), static_cast<long long>(elements));
  for (const auto& [dtype, total] : by_dtype)
    std::printf("  %-8s %5d tensors %12s\n", dtype.c_str(), total.count, human_bytes(total.bytes).c_str());
  std::printf("size on disk: %s (%llu bytes)\n", human_bytes(disk_bytes).c_str(),
              static_cast<unsigned long long>(disk_bytes));
}

void print_tensor_list(const std::vector<TensorEntry>& tensors) {
  std::printf("\n%-48s %-8s %-20s %s\n", "name", "dtype", "shape", "bytes");
  for (const TensorEntry& t : tensors)
    std::printf("%-48s %-8s %-20s %llu\n", t.name.c_str(), t.dtype.c_str(), shape_text(t.shape).c_str(),
                static_cast<unsigned long long>(t.bytes));
}

// Number of elements of an array-valued key, or -1 when absent.
int64_t array_length(const GgufFile& gguf, std::string_view key) {
  const GgufValue* v = gguf.find(key);
  return v && v->is_array() ? static_cast<int64_t>(std::get<GgufValue::Array>(v->value).size()) : -1;
}

void print_gguf_tokenizer(const GgufFile& gguf) {
  if (!gguf.has("tokenizer.ggml.model")) {
    std::printf("tokenizer:    none in the file\n");
    return;
  }
  std::printf("tokenizer:    %s", gguf.get_string("tokenizer.ggml.model").c_str());
  if (gguf.has("tokenizer.ggml.pre")) std::printf(" (pre-tokenizer %s)", gguf.get_string("tokenizer.ggml.pre").c_str());
  std::printf(", %lld tokens", static_cast<long long>(array_length(gguf, "tokenizer.ggml.tokens")));
  if (const int64_t merges = array_length(gguf, "tokenizer.ggml.merges"); merges >= 0)
    std::printf(", %lld merges", static_cast<long long>(merges));
  for (const char* id : {"bos", "eos", "padding", "unknown"}) {
    const std::string key = std::string("tokenizer.ggml.") + id + "_token_id";
    if (gguf.has(key)) std::printf(", %s %lld", id, static_cast<long long>(gguf.get_int(key)));
  }
  if (gguf.has("tokenizer.chat_template")) std::printf(", chat template");
  std::printf("\n");
}

int inspect_gguf(const fs::path& path, bool list, bool show_metadata) {
  const GgufFile gguf(path);
  std::printf("file:         %s\nformat:       GGUF v%u (alignment %llu)\n", path.string().c_str(),
              gguf.version(), static_cast<unsigned long long>(gguf.alignment()));
  if (gguf.has("general.name")) std::printf("name:         %s\n", gguf.get_string("general.name").c_str());
  print_config(llama_config_from_gguf(gguf));
  std::vector<TensorEntry> tensors;
  std::map<std::string, int> quantized;
  for (const GgufTensor& t : gguf.tensors()) {
    const std::string type(ggml_type_name(t.type));
    tensors.push_back({t.name, type, t.shape(), t.data.size()});
    if (ggml_block_elements(t.type) > 1) ++quantized[type];
  }
  print_tensor_summary(tensors, gguf.file_size());
  if (!quantized.empty()) {
    std::printf("quantization: GGUF block formats");
    for (const auto& [type, count] : quantized) std::printf(" %s x%d", type.c_str(), count);
    std::printf(" (dequantized to float32 on load)");
    if (gguf.has("general.quantization_version"))
      std::printf(", quantization_version %lld", static_cast<long long>(gguf.get_int("general.quantization_version")));
    std::printf("\n");
  }
  print_gguf_tokenizer(gguf);
  if (show_metadata) {
    std::printf("\nmetadata (%zu keys):\n", gguf.metadata().size());
    for (const auto& [key, value] : gguf.metadata())
      std::printf("  %-44s %s\n", key.c_str(), gguf_value_to_string(value).c_str());
  }
  if (list) print_tensor_list(tensors);
  return 0;
}

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

// quant_method, format version, every other field, and the recipe's sections one per line.
void print_quantization(const json& q) {
  if (!q.is_object()) {
    std::printf("quantization: %s\n", q.dump().c_str());
    return;
  }
  std::printf("quantization: quant_method %s", q.value("quant_method", json("?")).dump().c_str());
  for (const char* version : {"format_version", "version"})
    if (q.contains(version)) std::printf(", %s %s", version, q[version].dump().c_str());
  std::printf("\n");
  for (const auto& [key, value] : q.items()) {
    if (key == "quant_method" || key == "format_version" || key == "version" || key == "recipe") continue;
    std::printf("  %-22s %s\n", key.c_str(), value.dump().c_str());
  }
  if (!q.contains("recipe")) return;
  const json& recipe = q["recipe"];
  if (!recipe.is_object()) {
    std::printf("  %-22s %s\n", "recipe", recipe.dump().c_str());
    return;
  }
  constexpr size_t kMaxWidth = 100;
  for (const auto& [key, value] : recipe.items()) {
    std::string text = value.dump();
    if (text.size() > kMaxWidth) text = text.substr(0, kMaxWidth - 3) + "...";
    std::printf("  recipe.%-15s %s\n", key.c_str(), text.c_str());
  }
}

int inspect_safetensors(const fs::path& path, bool list, bool show_metadata) {
  const SafetensorsCheckpoint checkpoint(path);
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  std::printf("file:         %s\nformat:       safetensors (%zu file%s)\n", path.string().c_str(),
              checkpoint.shards().size(), checkpoint.shards().size() == 1 ? "" : "s");
  std::optional<json> quantization;
  if (fs::exists(dir / "config.json")) {
    print_config(load_llama_config(dir / "config.json"));
    const json config = read_json(dir / "config.json");
    if (config.contains("quantization_config")) quantization = config["quantization_config"];
  } else {
    std::printf("config:       none (no config.json beside the checkpoint)\n");
  }
  std::string tokenizer_files;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "tokenizer.gguf"})
    if (fs::exists(dir / name)) tokenizer_files += std::string(tokenizer_files.empty() ? "" : ", ") + name;
  std::printf("tokenizer:    %s\n", tokenizer_files.empty() ? "no tokenizer file beside the checkpoint"
                                                           : tokenizer_files.c_str());
  std::vector<TensorEntry> tensors;
  for (const TensorView* t : checkpoint.tensors())
    tensors.push_back({t->name, std::string(dtype_name(t->dtype)), t->shape, t->data.size()});
  print_tensor_summary(tensors, checkpoint.total_file_bytes());
  if (fs::is_directory(path)) {
    uint64_t directory_bytes = 0;
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.is_regular_file()) directory_bytes += entry.file_size();
    std::printf("directory:    %s with config, tokenizer and other files\n", human_bytes(directory_bytes).c_str());
  }
  if (quantization) print_quantization(*quantization);
  if (show_metadata) {
    std::printf("\n__metadata__ (%zu keys):\n", checkpoint.metadata().size());
    for (const auto& [key, value] : checkpoint.metadata()) std::printf("  %-30s %s\n", key.c_str(), value.c_str());
  }
  if (list) print_tensor_list(tensors);
  return 0;
}

bool is_gguf(const fs::path& path) {
  if (path.extension() == ".gguf") return true;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string(magic, 4) == "GGUF";
}

int run_inspect(int argc, char** argv) {
  Args args("inspect", "PATH   (a .gguf file, a .safetensors file, or a Hugging Face checkpoint directory)",
            {{"tensors", "list every tensor (name, dtype, shape, bytes)", "", true},
             {"metadata", "print the GGUF metadata / safetensors __metadata__", "", true}});
  if (!args.parse(argc, argv)) return 0;
  if (args.positional().size() != 1) fail("expected exactly one PATH (see fireq inspect --help)");
  const fs::path path = args.positional()[0];
  if (!fs::exists(path)) fail(path.string(), ": no such file or directory");
  if (!fs::is_directory(path) && is_gguf(path)) return inspect_gguf(path, args.on("tensors"), args.on("metadata"));
  return inspect_safetensors(path, args.on("tensors"), args.on("metadata"));
}

const Register kInspect({"inspect", "summarize a checkpoint (GGUF, safetensors, HF directory)", run_inspect});

}  // namespace
}  // namespace fireq::cli
