#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/safetensors.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors and GGUF are little-endian; the readers map them without byte swaps");

namespace fireq {
namespace {

using nlohmann::json;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
  bool is_float;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4, true},          {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true},        {DType::F8_E4M3, "F8_E4M3", 1, true},
    {DType::F8_E5M2, "F8_E5M2", 1, true},  {DType::I8, "I8", 1, false},
    {DType::U8, "U8", 1, false},           {DType::I32, "I32", 4, false},
    {DType::I64, "I64", 8, false},
};

const DTypeInfo& info(DType dtype) {
  for (const DTypeInfo& d : kDTypes)
    if (d.dtype == dtype) return d;
  fail("invalid DType value ", static_cast<int>(dtype));
}

// The header's top-level keys in order, with duplicates reported (nlohmann keeps only the last).
std::vector<std::string> top_level_keys(std::string_view text, const std::string& where,
                                        json& parsed) {
  std::vector<std::string> keys;
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, json& value) {
    if (event == json::parse_event_t::key && depth == 1 && value.is_string()) {
      const std::string& key = value.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
      keys.push_back(key);
    }
    return true;
  };
  try {
    parsed = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail(where, ": header is not valid JSON: ", e.what());
  }
  if (!parsed.is_object()) fail(where, ": header is not a JSON object");
  if (!duplicate.empty()) fail(where, ": tensor '", duplicate, "': listed twice in the header");
  return keys;
}

uint64_t json_unsigned(const json& value, const std::string& where, const char* what) {
  if (!value.is_number_unsigned()) fail(where, ": ", what, " must be a non-negative integer, got ", value.dump());
  return value.get<uint64_t>();
}

TensorView parse_entry(const std::string& name, const json& entry, const std::string& file_name,
                       std::span<const std::byte> data_section, uint64_t& begin_out) {
  const std::string where = file_name + ": tensor '" + name + "'";
  if (!entry.is_object()) fail(where, ": header entry is not an object");
  for (const auto& [field, unused] : entry.items())
    if (field != "dtype" && field != "shape" && field != "data_offsets")
      fail(where, ": unexpected field '", field, "'");
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) fail(where, ": missing or non-string 'dtype'");
  if (!entry.contains("shape") || !entry["shape"].is_array()) fail(where, ": missing or non-array 'shape'");
  if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
      entry["data_offsets"].size() != 2)
    fail(where, ": 'data_offsets' must be an array [begin, end]");

  TensorView view;
  view.name = name;
  const std::string dtype = entry["dtype"].get<std::string>();
  const auto parsed_dtype = dtype_from_name(dtype);
  if (!parsed_dtype)
    fail(where, ": unsupported dtype '", dtype, "' (supported: F32 F16 BF16 F8_E4M3 F8_E5M2 I8 U8 I32 I64)");
  view.dtype = *parsed_dtype;

  // numel x element size, with every product checked against overflow.
  uint64_t bytes = dtype_size(view.dtype);
  for (const json& dim : entry["shape"]) {
    const uint64_t d = json_unsigned(dim, where, "every shape dimension");
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(where, ": shape dimension ", d, " is too large");
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / d)
      fail(where, ": shape ", entry["shape"].dump(), " overflows 64-bit byte counts");
    bytes *= d;
    view.shape.push_back(static_cast<int64_t>(d));
  }
  const uint64_t begin = json_unsigned(entry["data_offsets"][0], where, "data_offsets[0]");
  const uint64_t end = json_unsigned(entry["data_offsets"][1], where, "data_offsets[1]");
  if (end < begin) fail(where, ": data_offsets [", begin, ", ", end, "] end before begin");
  if (end - begin != bytes)
    fail(where, ": shape ", entry["shape"].dump(), " x ", dtype, " (", dtype_size(view.dtype),
         " bytes) needs ", bytes, " bytes but data_offsets [", begin, ", ", end, "] span ", end - begin);
  if (end > data_section.size())
    fail(where, ": data_offsets [", begin, ", ", end, "] run past the end of the data (",
         data_section.size(), " bytes after the header; file truncated?)");
  view.data = data_section.subspan(begin, end - begin);
  begin_out = begin;
  return view;
}

std::map<std::string, std::string> parse_metadata(const json& value, const std::string& file_name) {
  if (!value.is_object()) fail(file_name, ": __metadata__ is not an object of strings");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string())
      fail(file_name, ": __metadata__ value of '", key, "' is not a string: ", v.dump());
    metadata.emplace(key, v.get<std::string>());
  }
  return metadata;
}

}  // namespace

std::string_view dtype_name(DType dtype) { return info(dtype).name; }
size_t dtype_size(DType dtype) { return info(dtype).size; }
bool dtype_is_float(DType dtype) { return info(dtype).is_float; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const DTypeInfo& d : kDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

std::vector<float> tensor_to_float(const TensorView& tensor) {
  const size_t n = static_cast<size_t>(tensor.numel());
  std::vector<float> out(n);
  const std::byte* src = tensor.data.data();
  auto load16 = [src](size_t i) {
    uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    return v;
  };
  switch (tensor.dtype) {
    case DType::F32:
      std::memcpy(out.data(), src, n * 4);
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_float(load16(i));
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(load16(i));
      break;
    case DType::F8_E4M3:
      for (size_t i = 0; i < n; ++i) out[i] = fp8_e4m3_to_float(static_cast<uint8_t>(src[i]));
      break;
    case DType::F8_E5M2:
      for (size_t i = 0; i < n; ++i) out[i] = fp8_e5m2_to_float(static_cast<uint8_t>(src[i]));
      break;
    default:
      fail(tensor.file.string(), ": tensor '", tensor.name, "': dtype ", dtype_name(tensor.dtype),
           " is not a float type");
  }
  return out;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : map_(std::make_shared<MappedFile>(path)) {
  const std::string file_name = path.string();
  const std::span<const std::byte> bytes = map_->bytes();
  if (bytes.size() < 8)
    fail(file_name, ": ", bytes.size(), " bytes, too short for the 8-byte header length (truncated?)");
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes.data(), 8);
  if (header_bytes > kSafetensorsMaxHeaderBytes)
    fail(file_name, ": header length ", header_bytes, " exceeds the ", kSafetensorsMaxHeaderBytes,
         "-byte limit (not a safetensors file?)");
  if (header_bytes > bytes.size() - 8)
    fail(file_name, ": header length ", header_bytes, " runs past the end of the ", bytes.size(),
         "-byte file (truncated?)");
  const std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_bytes);
  const std::span<const std::byte> data_section = bytes.subspan(8 + header_bytes);

  json parsed;
  const std::vector<std::string> keys = top_level_keys(header, file_name, parsed);
  std::vector<std::pair<uint64_t, TensorView>> ordered;
  for (const std::string& key : keys) {
    if (key == "__metadata__") {
      metadata_ = parse_metadata(parsed[key], file_name);
      continue;
    }
    uint64_t begin = 0;
    TensorView view = parse_entry(key, parsed[key], file_name, data_section, begin);
    view.file = path;
    ordered.emplace_back(begin, std::move(view));
  }
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  tensors_.reserve(ordered.size());
  const TensorView* previous = nullptr;
  uint64_t previous_end = 0;
  for (auto& [begin, view] : ordered) {
    if (view.data.empty()) {
      tensors_.push_back(std::move(view));
      continue;
    }
    if (previous && begin < previous_end)
      fail(file_name, ": tensor '", view.name, "': bytes [", begin, ", ", begin + view.data.size(),
           ") overlap tensor '", previous->name, "' (ends at ", previous_end, ")");
    previous_end = begin + view.data.size();
    tensors_.push_back(std::move(view));
    previous = &tensors_.back();
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::at(std::string_view name) const {
  const TensorView* view = find(name);
  if (!view) fail(path().string(), ": no tensor named '", name, "'");
  return *view;
}

namespace {

std::filesystem::path resolve_checkpoint_path(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) fail(path.string(), ": no such file or directory");
  if (!std::filesystem::is_directory(path)) return path;
  for (const char* name : {"model.safetensors", "model.safetensors.index.json"})
    if (std::filesystem::exists(path / name)) return path / name;
  fail(path.string(), ": directory holds neither model.safetensors nor model.safetensors.index.json");
}

}  // namespace

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::filesystem::path& path) {
  const std::filesystem::path file = resolve_checkpoint_path(path);
  if (file.extension() != ".json") {
    shards_.emplace_back(file);
    for (const TensorView& t : shards_.front().tensors()) {
      tensors_.push_back(&t);
      by_name_.emplace(t.name, &t);
    }
    return;
  }

  const MappedFile index_file(file);
  const std::span<const std::byte> bytes = index_file.bytes();
  json index;
  try {
    index = json::parse(reinterpret_cast<const char*>(bytes.data()),
                        reinterpret_cast<const char*>(bytes.data() + bytes.size()));
  } catch (const json::exception& e) {
    fail(file.string(), ": index is not valid JSON: ", e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(file.string(), ": index has no 'weight_map' object");
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) fail(file.string(), ": index 'weight_map' is empty");

  // Open each shard once, in order of first appearance.
  std::map<std::string, size_t> shard_of_file;
  std::vector<std::string> shard_names;
  for (const auto& [tensor, shard] : weight_map.items()) {
    if (!shard.is_string())
      fail(file.string(), ": tensor '", tensor, "': weight_map value is not a file name");
    const std::string name = shard.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      fail(file.string(), ": tensor '", tensor, "': shard '", name, "' is not a plain file name");
    if (shard_of_file.emplace(name, shard_names.size()).second) shard_names.push_back(name);
  }
  shards_.reserve(shard_names.size());
  for (const std::string& name : shard_names) {
    const std::filesystem::path shard_path = file.parent_path() / name;
    if (!std::filesystem::exists(shard_path))
      fail(file.string(), ": shard '", name, "' listed in the index does not exist (",
           shard_path.string(), ")");
    shards_.emplace_back(shard_path);
  }
  for (const auto& [tensor, shard] : weight_map.items()) {
    const SafetensorsFile& owner = shards_[shard_of_file.at(shard.get<std::string>())];
    const TensorView* view = owner.find(tensor);
    if (!view)
      fail(file.string(), ": tensor '", tensor, "' is listed in the index but absent from shard ",
           owner.path().string());
    by_name_.emplace(tensor, view);
  }
  for (const SafetensorsFile& shard : shards_) {
    for (const TensorView& t : shard.tensors()) {
      const auto it = by_name_.find(t.name);
      if (it == by_name_.end())
        fail(shard.path().string(), ": tensor '", t.name, "' is not listed in the index ", file.string());
      if (it->second != &t)
        fail(shard.path().string(), ": tensor '", t.name, "' also appears in shard ",
             it->second->file.string(), " (the index maps it there)");
      tensors_.push_back(&t);
    }
  }
}

const TensorView* SafetensorsCheckpoint::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& SafetensorsCheckpoint::at(std::string_view name) const {
  const TensorView* view = find(name);
  if (!view)
    fail(shards_.front().path().string(), (shards_.size() > 1 ? " (and other shards)" : ""),
         ": no tensor named '", name, "'");
  return *view;
}

uint64_t SafetensorsCheckpoint::total_file_bytes() const {
  uint64_t total = 0;
  for (const SafetensorsFile& shard : shards_) total += shard.file_size();
  return total;
}

}  // namespace fireq
