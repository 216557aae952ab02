#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "atomic_file.h"
#include "fireq/error.h"
#include "fireq/safetensors.h"

namespace fireq {
namespace {

using nlohmann::ordered_json;

uint64_t expected_bytes(const TensorToWrite& t, const std::filesystem::path& path) {
  uint64_t bytes = dtype_size(t.dtype);
  for (const int64_t d : t.shape) {
    if (d < 0) fail(path.string(), ": tensor '", t.name, "': negative dimension ", d);
    bytes *= static_cast<uint64_t>(d);
  }
  return bytes;
}

void check_tensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors) {
  std::set<std::string_view> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      fail(path.string(), ": invalid tensor name '", t.name, "'");
    if (!names.insert(t.name).second) fail(path.string(), ": tensor '", t.name, "' given twice");
    const uint64_t bytes = expected_bytes(t, path);
    if (bytes != t.data.size())
      fail(path.string(), ": tensor '", t.name, "': shape x ", dtype_name(t.dtype), " needs ", bytes,
           " bytes but ", t.data.size(), " were given");
  }
}

// The JSON header, space-padded so that 8 + its length is a multiple of 8 (the data then starts
// 8-byte aligned, as the format requires for zero-copy readers).
std::string make_header(std::span<const TensorToWrite> tensors,
                        const std::map<std::string, std::string>& metadata) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    ordered_json entry;
    entry["dtype"] = dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.data.size()};
    header[t.name] = entry;
    offset += t.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

std::string shard_file_name(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

// Shards of an earlier write with another shard count would otherwise linger beside the new ones.
void remove_stale_shards(const std::filesystem::path& dir, const std::vector<std::filesystem::path>& keep) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    unsigned index = 0, count = 0;
    char tail[32] = {};
    const bool is_shard = std::sscanf(name.c_str(), "model-%5u-of-%5u.%31s", &index, &count, tail) == 3 &&
                          std::string(tail) == "safetensors";
    if (is_shard && std::find(keep.begin(), keep.end(), entry.path()) == keep.end())
      std::filesystem::remove(entry.path());
  }
}

}  // namespace

void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_tensors(path, tensors);
  const std::string header = make_header(tensors, metadata);
  const uint64_t header_bytes = header.size();
  io::AtomicFile file(path);
  file.write(std::as_bytes(std::span(&header_bytes, 1)));
  file.write(std::as_bytes(std::span(header.data(), header.size())));
  for (const TensorToWrite& t : tensors) file.write(t.data);
  file.commit();
}

std::vector<std::filesystem::path> write_safetensors_checkpoint(
    const std::filesystem::path& dir, std::span<const TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes) {
  std::filesystem::create_directories(dir);
  check_tensors(dir, tensors);
  const std::filesystem::path single = dir / "model.safetensors";
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";

  // Greedy in the given order: a shard closes when the next tensor would push it past the limit.
  std::vector<std::pair<size_t, size_t>> shards;  // [first, last) tensor ranges
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = tensors[i].data.size();
    if (shards.empty() || (shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes)) {
      shards.emplace_back(i, i);
      shard_bytes = 0;
    }
    shards.back().second = i + 1;
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  // A stale file of the other layout would make readers pick the wrong one.
  if (shards.size() <= 1) {
    write_safetensors(single, tensors, metadata);
    std::filesystem::remove(index_path);
    remove_stale_shards(dir, {});
    return {single};
  }
  std::filesystem::remove(single);
  std::vector<std::filesystem::path> written;
  ordered_json weight_map = ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shard_file_name(s, shards.size());
    const auto [first, last] = shards[s];
    write_safetensors(dir / name, tensors.subspan(first, last - first), metadata);
    for (size_t i = first; i < last; ++i) weight_map[tensors[i].name] = name;
    written.push_back(dir / name);
  }
  ordered_json index;
  index["metadata"] = ordered_json::object();
  index["metadata"]["total_size"] = total_bytes;
  for (const auto& [k, v] : metadata) index["metadata"][k] = v;
  index["weight_map"] = weight_map;
  const std::string text = index.dump(2) + "\n";
  write_file_atomic(index_path, std::as_bytes(std::span(text.data(), text.size())));
  written.push_back(index_path);
  remove_stale_shards(dir, written);
  return written;
}

}  // namespace fireq
