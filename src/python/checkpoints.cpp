// Checkpoints from Python: fireq.quantize (what `fireq quantize` does), fireq.inspect's facts as
// JSON (what `fireq inspect` prints), writing safetensors files, and the built-in recipes.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "fireq/config.h"
#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/model.h"
#include "fireq/quant.h"
#include "fireq/safetensors.h"
#include "fireq/tokenizer.h"

namespace fireq::python {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_text_file(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(what, " ", path.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) fail(what, " ", path.string(), ": empty");
  return text.str();
}

struct QuantizeRequest {
  fs::path model, out;
  std::string recipe;
  std::optional<fs::path> calib_text;
  std::optional<int> calib_samples, calib_seq_len;
  uint64_t max_shard_bytes = 2ull << 30;
  bool verbose = true;
};

// The steps of `fireq quantize`: load, calibrate when the recipe needs it, quantize, save.
json quantize(const QuantizeRequest& request) {
  QuantRecipe recipe = load_recipe(request.recipe);
  if (request.calib_samples) recipe.calib_samples = *request.calib_samples;
  if (request.calib_seq_len) recipe.calib_seq_len = *request.calib_seq_len;
  validate_recipe(recipe, request.recipe);
  if (fs::exists(request.out)) fail("quantize: out_dir ", request.out.string(), " already exists");
  const auto log = [&](const std::string& line) {
    if (request.verbose) std::fprintf(stderr, "[fireq quantize] %s\n", line.c_str());
  };
  const auto start = std::chrono::steady_clock::now();
  // The calibration text is read first so that a wrong path fails before the (long) weight load.
  const fs::path text_path = request.calib_text.value_or(recipe.calib_text);
  const std::string text = recipe.needs_calibration() ? read_text_file(text_path, "calibration text") : "";
  const LlamaWeights weights = load_llama_weights(request.model);
  log("loaded " + request.model.string() + " (" + weights.source_description + ")");

  std::vector<int32_t> calibration;
  if (recipe.needs_calibration()) {
    const std::vector<int32_t> tokens = load_tokenizer(request.model)->encode(text, false);
    calibration = calibration_windows(tokens, recipe.calib_samples, recipe.calib_seq_len, text_path.string());
    log("calibration: " + std::to_string(recipe.calib_samples) + " x " + std::to_string(recipe.calib_seq_len) +
        " tokens from " + text_path.string());
  }
  const QuantizedModel quantized = quantize_model(weights, recipe, calibration, log);
  const uint64_t bytes = save_quantized_checkpoint(
      quantized, request.out, {.source = request.model, .max_shard_bytes = request.max_shard_bytes});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log("wrote " + request.out.string());
  return {{"path", request.out.string()}, {"bytes", bytes}, {"recipe", recipe.name}, {"seconds", seconds}};
}

json read_json_file(const fs::path& path) {
  try {
    return json::parse(read_text_file(path, "JSON file"));
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

json tensor_entry(const std::string& name, std::string_view dtype, const std::vector<int64_t>& shape,
                  uint64_t bytes) {
  return {{"name", name}, {"dtype", dtype}, {"shape", shape}, {"bytes", bytes}};
}

json gguf_value(const GgufValue& value) {
  return std::visit(
      [&](const auto& v) -> json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, GgufValue::Array>) {
          json array = json::array();
          for (const GgufValue& element : v) array.push_back(gguf_value(element));
          return array;
        } else {
          return v;
        }
      },
      value.value);
}

json inspect_gguf(const fs::path& path, bool with_metadata) {
  const GgufFile gguf(path);
  json info = {{"path", path.string()}, {"format", "gguf"}, {"gguf_version", gguf.version()},
               {"file_bytes", gguf.file_size()}, {"config", json::parse(llama_config_json(llama_config_from_gguf(gguf)))}};
  if (gguf.has("general.name")) info["name"] = gguf.get_string("general.name");
  json tensors = json::array();
  for (const GgufTensor& t : gguf.tensors()) tensors.push_back(tensor_entry(t.name, ggml_type_name(t.type), t.shape(), t.data.size()));
  info["tensors"] = std::move(tensors);
  info["tokenizer"] = gguf.has("tokenizer.ggml.model") ? json(gguf.get_string("tokenizer.ggml.model")) : json(nullptr);
  if (with_metadata) {
    json metadata = json::object();
    for (const auto& [key, value] : gguf.metadata()) metadata[key] = gguf_value(value);
    info["metadata"] = std::move(metadata);
  }
  return info;
}

json inspect_safetensors(const fs::path& path, bool with_metadata) {
  const SafetensorsCheckpoint checkpoint(path);
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  json info = {{"path", path.string()}, {"format", "safetensors"}, {"shards", checkpoint.shards().size()},
               {"file_bytes", checkpoint.total_file_bytes()}, {"config", nullptr}, {"quantization_config", nullptr}};
  if (fs::exists(dir / "config.json")) {
    info["config"] = json::parse(llama_config_json(load_llama_config(dir / "config.json")));
    const json config = read_json_file(dir / "config.json");
    if (config.contains("quantization_config")) info["quantization_config"] = config["quantization_config"];
  }
  json tensors = json::array();
  for (const TensorView* t : checkpoint.tensors()) tensors.push_back(tensor_entry(t->name, dtype_name(t->dtype), t->shape, t->data.size()));
  info["tensors"] = std::move(tensors);
  json tokenizer_files = json::array();
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "tokenizer.gguf"})
    if (fs::exists(dir / name)) tokenizer_files.push_back(name);
  info["tokenizer"] = std::move(tokenizer_files);
  if (with_metadata) info["metadata"] = checkpoint.metadata();
  return info;
}

bool is_gguf(const fs::path& path) {
  if (path.extension() == ".gguf") return true;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string(magic, 4) == "GGUF";
}

std::string inspect_json(const fs::path& path, bool with_metadata) {
  nb::gil_scoped_release unlocked;
  if (!fs::exists(path)) fail(path.string(), ": no such file or directory");
  const json info = !fs::is_directory(path) && is_gguf(path) ? inspect_gguf(path, with_metadata)
                                                             : inspect_safetensors(path, with_metadata);
  return info.dump();
}

using CpuBytes = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;

// Tensors arrive as raw little-endian bytes with their dtype name and shape (the Python side
// takes them from numpy), so every safetensors dtype goes through one path.
void save_safetensors(const fs::path& path, const std::vector<std::string>& names,
                      const std::vector<std::string>& dtypes, const std::vector<std::vector<int64_t>>& shapes,
                      const std::vector<CpuBytes>& data, const std::map<std::string, std::string>& metadata) {
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::optional<DType> dtype = dtype_from_name(dtypes[i]);
    if (!dtype) fail("save_safetensors ", path.string(), ": tensor ", names[i], ": unknown dtype ", dtypes[i]);
    tensors.push_back({names[i], *dtype, shapes[i],
                       std::span(reinterpret_cast<const std::byte*>(data[i].data()), data[i].size())});
  }
  nb::gil_scoped_release unlocked;
  write_safetensors(path, tensors, metadata);
}

}  // namespace

void bind_checkpoints(nb::module_& m) {
  m.def(
      "quantize",
      [](const fs::path& model, const fs::path& out, const std::string& recipe, std::optional<fs::path> calib_text,
         std::optional<int> calib_samples, std::optional<int> calib_seq_len, uint64_t max_shard_bytes, bool verbose) {
        const QuantizeRequest request{model, out, recipe, calib_text, calib_samples, calib_seq_len, max_shard_bytes, verbose};
        std::string summary;
        {
          nb::gil_scoped_release unlocked;
          summary = quantize(request).dump();
        }
        return summary;
      },
      nb::arg("model"), nb::arg("out"), nb::arg("recipe"), nb::arg("calib_text").none(),
      nb::arg("calib_samples").none(), nb::arg("calib_seq_len").none(), nb::arg("max_shard_bytes"),
      nb::arg("verbose"), "quantize a checkpoint; returns a JSON summary");
  m.def("inspect_json", &inspect_json, nb::arg("path"), nb::arg("metadata"));
  m.def("save_safetensors", &save_safetensors, nb::arg("path"), nb::arg("names"), nb::arg("dtypes"),
        nb::arg("shapes"), nb::arg("data"), nb::arg("metadata"));
  m.def("recipe_names", &builtin_recipe_names);
  m.def("recipe_yaml", [](const std::string& name) { return recipe_to_yaml(load_recipe(name)); }, nb::arg("name"),
        "a preset or recipe file resolved to full YAML");
}

}  // namespace fireq::python
