#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "builtin_recipes.h"
#include "fireq/error.h"
#include "fireq/quant_recipe.h"

namespace fireq {
namespace {

// Walks one YAML mapping: each known key has a handler; any other key is refused by name.
class MappingReader {
 public:
  using Handler = std::function<void(const YAML::Node&, const std::string& path)>;

  MappingReader(const std::string& source, std::string path) : source_(source), path_(std::move(path)) {}

  MappingReader& on(const std::string& key, Handler handler) {
    handlers_.emplace(key, std::move(handler));
    return *this;
  }

  void read(const YAML::Node& node) const {
    if (!node.IsMap()) fail(source_, ": ", where(""), "expected a mapping");
    for (const auto& entry : node) {
      const std::string key = entry.first.as<std::string>();
      const auto it = handlers_.find(key);
      if (it == handlers_.end()) fail(source_, ": ", where(key), "unknown key", known_keys());
      it->second(entry.second, path_.empty() ? key : path_ + "." + key);
    }
  }

 private:
  std::string where(const std::string& key) const {
    const std::string full = path_.empty() ? key : (key.empty() ? path_ : path_ + "." + key);
    return full.empty() ? std::string() : full + ": ";
  }
  std::string known_keys() const {
    std::string list;
    for (const auto& [key, handler] : handlers_) list += (list.empty() ? "" : ", ") + key;
    return " (known: " + list + ")";
  }

  const std::string& source_;
  std::string path_;
  std::map<std::string, Handler> handlers_;
};

template <typename T>
T scalar(const YAML::Node& node, const std::string& path, const std::string& source,
         const char* expected) {
  if (!node.IsScalar()) fail(source, ": ", path, ": expected ", expected);
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    fail(source, ": ", path, ": expected ", expected, ", got '", node.Scalar(), "'");
  }
}

bool read_bool(const YAML::Node& n, const std::string& path, const std::string& source) {
  return scalar<bool>(n, path, source, "true or false");
}

int read_int(const YAML::Node& n, const std::string& path, const std::string& source, int lo, int hi) {
  const long long v = scalar<long long>(n, path, source, "an integer");
  if (v < lo || v > hi) fail(source, ": ", path, ": ", v, " is out of range [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

double read_double(const YAML::Node& n, const std::string& path, const std::string& source,
                   double lo, double hi, bool lo_open) {
  const double v = scalar<double>(n, path, source, "a number");
  const bool below = lo_open ? !(v > lo) : !(v >= lo);
  if (!std::isfinite(v) || below || v > hi)
    fail(source, ": ", path, ": ", v, " is out of range ", lo_open ? "(" : "[", lo, ", ", hi, "]");
  return v;
}

int read_choice(const YAML::Node& n, const std::string& path, const std::string& source,
                std::initializer_list<int> allowed) {
  const int v = read_int(n, path, source, std::min(allowed), std::max(allowed));
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (const int a : allowed) list += (list.empty() ? "" : ", ") + std::to_string(a);
    fail(source, ": ", path, ": ", v, " is not one of {", list, "}");
  }
  return v;
}

template <typename E>
E read_enum(const YAML::Node& n, const std::string& path, const std::string& source,
            std::initializer_list<std::pair<const char*, E>> names) {
  const std::string v = scalar<std::string>(n, path, source, "a string");
  std::string list;
  for (const auto& [name, value] : names) {
    if (v == name) return value;
    list += (list.empty() ? "" : ", ") + std::string(name);
  }
  fail(source, ": ", path, ": '", v, "' is not one of {", list, "}");
}

const std::initializer_list<std::pair<const char*, ScaleDType>> kScaleDTypes = {
    {"fp8_e4m3", ScaleDType::kFp8E4M3}, {"bf16", ScaleDType::kBf16}};
const std::initializer_list<std::pair<const char*, KRemainder>> kKRemainders = {
    {"refuse", KRemainder::kRefuse}, {"zero_pad", KRemainder::kZeroPad}};
const std::initializer_list<std::pair<const char*, TensorScaleFloor>> kTensorScaleFloors = {
    {"subnormal", TensorScaleFloor::kSubnormal}, {"normal", TensorScaleFloor::kNormal}};
const std::initializer_list<std::pair<const char*, GroupScaleSearch>> kGroupScaleSearches = {
    {"absmax", GroupScaleSearch::kAbsmax}, {"mse", GroupScaleSearch::kMse}};
const std::initializer_list<std::pair<const char*, ActivationDType>> kActivationDTypes = {
    {"fp8_e4m3", ActivationDType::kFp8E4M3PerToken}, {"bf16", ActivationDType::kBf16}};

template <typename E>
const char* enum_name(E value, std::initializer_list<std::pair<const char*, E>> names) {
  for (const auto& [name, v] : names)
    if (v == value) return name;
  return "?";
}

void read_smoothing_pair(const YAML::Node& node, const std::string& path, const std::string& source,
                         SmoothingPair& pair) {
  MappingReader(source, path)
      .on("enabled", [&](auto& n, auto& p) { pair.enabled = read_bool(n, p, source); })
      .on("scale_type", [&](auto& n, auto& p) { pair.scale_type = read_choice(n, p, source, {0, 1, 2}); })
      .on("constant",
          [&](auto& n, auto& p) { pair.constant = read_double(n, p, source, 0.0, 1e6, true); })
      .read(node);
}

void read_body(const YAML::Node& root, const std::string& source, QuantRecipe& r) {
  const auto& s = source;
  MappingReader(s, "")
      .on("base", [](auto&, auto&) {})  // applied before the body is read
      .on("name", [&](auto& n, auto& p) { r.name = scalar<std::string>(n, p, s, "a string"); })
      .on("description",
          [&](auto& n, auto& p) { r.description = scalar<std::string>(n, p, s, "a string"); })
      .on("weights",
          [&](auto& node, auto& path) {
            MappingReader(s, path)
                .on("quantize", [&](auto& n, auto& p) { r.quantize_weights = read_bool(n, p, s); })
                .on("bits", [&](auto& n, auto& p) { r.weight_bits = read_choice(n, p, s, {4}); })
                .on("group_size", [&](auto& n, auto& p) { r.group_size = read_choice(n, p, s, {64, 128}); })
                .on("scale_dtype",
                    [&](auto& n, auto& p) { r.weight_scale_dtype = read_enum(n, p, s, kScaleDTypes); })
                .on("k_not_multiple_of_group",
                    [&](auto& n, auto& p) { r.k_remainder = read_enum(n, p, s, kKRemainders); })
                .on("per_tensor_scale", [&](auto& n, auto& p) { r.per_tensor_scale = read_bool(n, p, s); })
                .on("tensor_scale_floor",
                    [&](auto& n, auto& p) { r.tensor_scale_floor = read_enum(n, p, s, kTensorScaleFloors); })
                .on("scale_search",
                    [&](auto& n, auto& p) { r.group_scale_search = read_enum(n, p, s, kGroupScaleSearches); })
                .read(node);
          })
      .on("activations",
          [&](auto& node, auto& path) {
            MappingReader(s, path)
                .on("dtype", [&](auto& n, auto& p) { r.activations = read_enum(n, p, s, kActivationDTypes); })
                .read(node);
          })
      .on("smoothing",
          [&](auto& node, auto& path) {
            MappingReader(s, path)
                .on("qkv", [&](auto& n, auto& p) { read_smoothing_pair(n, p, s, r.smooth_qkv); })
                .on("o", [&](auto& n, auto& p) { read_smoothing_pair(n, p, s, r.smooth_o); })
                .on("gate_up", [&](auto& n, auto& p) { read_smoothing_pair(n, p, s, r.smooth_gate_up); })
                .on("down", [&](auto& n, auto& p) { read_smoothing_pair(n, p, s, r.smooth_down); })
                .read(node);
          })
      .on("v_mul", [&](auto& n, auto& p) { r.v_mul = read_double(n, p, s, 0.0, 100.0, true); })
      .on("attention",
          [&](auto& node, auto& path) {
            MappingReader(s, path)
                .on("query_dtype",
                    [&](auto& n, auto& p) {
                      r.fp8_queries = read_enum(n, p, s, kActivationDTypes) ==
                                      ActivationDType::kFp8E4M3PerToken;
                    })
                .on("kv_bits", [&](auto& n, auto& p) { r.kv_bits = read_choice(n, p, s, {4, 16}); })
                .on("kv_scale_dtype",
                    [&](auto& n, auto& p) { r.kv_scale_dtype = read_enum(n, p, s, kScaleDTypes); })
                .on("pre_rope",
                    [&](auto& sub, auto& sub_path) {
                      MappingReader(s, sub_path)
                          .on("enabled", [&](auto& n, auto& p) { r.pre_rope = read_bool(n, p, s); })
                          .on("alpha",
                              [&](auto& n, auto& p) { r.pre_rope_alpha = read_double(n, p, s, 0.0, 448.0, true); })
                          .read(sub);
                    })
                .on("post_rope",
                    [&](auto& sub, auto& sub_path) {
                      MappingReader(s, sub_path)
                          .on("enabled", [&](auto& n, auto& p) { r.post_rope = read_bool(n, p, s); })
                          .on("beta",
                              [&](auto& n, auto& p) { r.post_rope_beta = read_double(n, p, s, 0.0, 448.0, true); })
                          .on("top_k", [&](auto& n, auto& p) { r.post_rope_top_k = read_int(n, p, s, 1, 128); })
                          .read(sub);
                    })
                .read(node);
          })
      .on("calibration",
          [&](auto& node, auto& path) {
            MappingReader(s, path)
                .on("text", [&](auto& n, auto& p) { r.calib_text = scalar<std::string>(n, p, s, "a path"); })
                .on("samples", [&](auto& n, auto& p) { r.calib_samples = read_int(n, p, s, 1, 4096); })
                .on("seq_len", [&](auto& n, auto& p) { r.calib_seq_len = read_int(n, p, s, 16, 131072); })
                .read(node);
          })
      .on("skip_layers",
          [&](auto& node, auto& path) {
            if (!node.IsSequence()) fail(s, ": ", path, ": expected a list of layer indices");
            r.skip_layers.clear();
            for (size_t i = 0; i < node.size(); ++i)
              r.skip_layers.push_back(read_int(node[i], path + "[" + std::to_string(i) + "]", s, 0, 100000));
          })
      .read(root);
}

YAML::Node parse_yaml(std::string_view text, const std::string& source) {
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    fail(source, ": not valid YAML: ", e.what());
  }
}

}  // namespace

bool QuantRecipe::skips_layer(int layer) const {
  return std::find(skip_layers.begin(), skip_layers.end(), layer) != skip_layers.end();
}

void validate_recipe(const QuantRecipe& r, const std::string& source) {
  if (r.name.empty()) fail(source, ": name: must not be empty");
  if (!r.quantize_weights && r.activations == ActivationDType::kFp8E4M3PerToken)
    fail(source, ": activations.dtype: fp8_e4m3 needs weights.quantize: true (the W4A8 GEMM)");
  if (!r.quantize_weights && (r.per_tensor_scale))
    fail(source, ": weights.per_tensor_scale: needs weights.quantize: true");
  if (r.post_rope && !r.quantize_kv())
    fail(source, ": attention.post_rope.enabled: needs attention.kv_bits: 4 (it scales the INT4 keys)");
  if (r.pre_rope && !r.quantize_kv())
    fail(source, ": attention.pre_rope.enabled: needs attention.kv_bits: 4 (it conditions the INT4 keys)");
}

QuantRecipe parse_recipe(std::string_view yaml_text, const std::string& source) {
  const YAML::Node root = parse_yaml(yaml_text, source);
  if (!root.IsMap()) fail(source, ": expected a YAML mapping at the top level");
  QuantRecipe recipe;
  if (const YAML::Node base = root["base"]) {
    const std::string base_name = scalar<std::string>(base, "base", source, "a preset name");
    const auto names = builtin_recipe_names();
    if (std::find(names.begin(), names.end(), base_name) == names.end())
      fail(source, ": base: '", base_name, "' is not a preset");
    recipe = parse_recipe(builtin_recipe_yaml(base_name), "preset " + base_name);
    recipe.description.clear();
  }
  read_body(root, source, recipe);
  validate_recipe(recipe, source);
  return recipe;
}

std::vector<std::string> builtin_recipe_names() {
  std::vector<std::string> names;
  for (const auto& preset : kBuiltinRecipes) names.emplace_back(preset.name);
  return names;
}

std::string_view builtin_recipe_yaml(std::string_view name) {
  for (const auto& preset : kBuiltinRecipes)
    if (preset.name == name) return preset.yaml;
  std::string list;
  for (const auto& n : builtin_recipe_names()) list += (list.empty() ? "" : ", ") + n;
  fail("unknown recipe preset '", name, "' (presets: ", list, ")");
}

QuantRecipe load_recipe(const std::string& name_or_path) {
  for (const auto& preset : kBuiltinRecipes)
    if (preset.name == name_or_path) return parse_recipe(preset.yaml, "preset " + std::string(preset.name));
  const std::filesystem::path path(name_or_path);
  if (!std::filesystem::is_regular_file(path)) {
    std::string list;
    for (const auto& n : builtin_recipe_names()) list += (list.empty() ? "" : ", ") + n;
    fail("recipe '", name_or_path, "' is neither a preset (", list, ") nor a readable file");
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) fail(path.string(), ": cannot read the recipe file");
  return parse_recipe(text.str(), path.string());
}

namespace {

nlohmann::ordered_json smoothing_json(const SmoothingPair& p) {
  return {{"enabled", p.enabled}, {"scale_type", p.scale_type}, {"constant", p.constant}};
}

}  // namespace

std::string recipe_to_json(const QuantRecipe& r) {
  nlohmann::ordered_json j;
  j["name"] = r.name;
  j["description"] = r.description;
  j["weights"] = {{"quantize", r.quantize_weights},
                  {"bits", r.weight_bits},
                  {"group_size", r.group_size},
                  {"scale_dtype", enum_name(r.weight_scale_dtype, kScaleDTypes)},
                  {"k_not_multiple_of_group", enum_name(r.k_remainder, kKRemainders)},
                  {"per_tensor_scale", r.per_tensor_scale},
                  {"tensor_scale_floor", enum_name(r.tensor_scale_floor, kTensorScaleFloors)},
                  {"scale_search", enum_name(r.group_scale_search, kGroupScaleSearches)}};
  j["activations"] = {{"dtype", enum_name(r.activations, kActivationDTypes)}};
  j["smoothing"] = {{"qkv", smoothing_json(r.smooth_qkv)},
                    {"o", smoothing_json(r.smooth_o)},
                    {"gate_up", smoothing_json(r.smooth_gate_up)},
                    {"down", smoothing_json(r.smooth_down)}};
  j["v_mul"] = r.v_mul;
  j["attention"] = {
      {"query_dtype", r.fp8_queries ? "fp8_e4m3" : "bf16"},
      {"kv_bits", r.kv_bits},
      {"kv_scale_dtype", enum_name(r.kv_scale_dtype, kScaleDTypes)},
      {"pre_rope", {{"enabled", r.pre_rope}, {"alpha", r.pre_rope_alpha}}},
      {"post_rope", {{"enabled", r.post_rope}, {"beta", r.post_rope_beta}, {"top_k", r.post_rope_top_k}}}};
  j["calibration"] = {{"text", r.calib_text}, {"samples", r.calib_samples}, {"seq_len", r.calib_seq_len}};
  j["skip_layers"] = r.skip_layers;
  return j.dump(2);
}

namespace {

void use_block_style(YAML::Node node) {
  if (!node.IsMap() && !node.IsSequence()) return;
  // Short lists (skip_layers) stay on one line.
  node.SetStyle(node.IsSequence() ? YAML::EmitterStyle::Flow : YAML::EmitterStyle::Block);
  if (node.IsMap())
    for (auto entry : node) use_block_style(entry.second);
}

}  // namespace

std::string recipe_to_yaml(const QuantRecipe& recipe) {
  // JSON is a subset of YAML; re-emit it in block style for people.
  YAML::Node node = YAML::Load(recipe_to_json(recipe));
  use_block_style(node);
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

}  // namespace fireq
