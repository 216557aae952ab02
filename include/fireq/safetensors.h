// safetensors checkpoints: a memory-mapped, zero-copy reader (single file or sharded through
// model.safetensors.index.json) and an atomic writer. Format: 8-byte little-endian header length N,
// N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data; offsets are relative to the end of the header. Every header is validated in full
// (dtype, shape x dtype size == byte range, ranges inside the file, no overlaps, no duplicates);
// errors name the file, the tensor and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fireq {

enum class DType { F32, F16, BF16, F8_E4M3, F8_E5M2, I8, U8, I32, I64 };

std::string_view dtype_name(DType dtype);  // the safetensors spelling, e.g. "BF16"
std::optional<DType> dtype_from_name(std::string_view name);
size_t dtype_size(DType dtype);            // bytes per element
bool dtype_is_float(DType dtype);          // F32, F16, BF16, F8_E4M3, F8_E5M2

// A read-only memory map of a whole file (empty files map to an empty span).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// One tensor inside a mapped file. `data` stays valid while the owning reader is alive.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major, outermost first
  std::span<const std::byte> data;
  std::filesystem::path file;  // for error messages

  int64_t numel() const;
};

// Decodes a float tensor (F32, F16, BF16, F8_E4M3, F8_E5M2) to float32; other dtypes are refused.
std::vector<float> tensor_to_float(const TensorView& tensor);

// Limits on what the reader accepts before it trusts a header.
constexpr uint64_t kSafetensorsMaxHeaderBytes = 100ull << 20;

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return map_->path(); }
  const std::vector<TensorView>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(std::string_view name) const;
  const TensorView& at(std::string_view name) const;  // fails naming the file when absent
  uint64_t file_size() const { return map_->bytes().size(); }

 private:
  std::shared_ptr<MappedFile> map_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, size_t, std::less<>> index_;
};

// A checkpoint made of one .safetensors file or of the shards listed in an index
// ({"metadata": {...}, "weight_map": {tensor: shard file}}). `path` may be the .safetensors file,
// the index .json, or a directory holding model.safetensors or model.safetensors.index.json.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::filesystem::path& path);
  // Views point into the shards: moving keeps them valid, copying would not.
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) = default;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) = default;
  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  const std::vector<const TensorView*>& tensors() const { return tensors_; }  // by shard, file order
  const TensorView* find(std::string_view name) const;
  const TensorView& at(std::string_view name) const;
  // The first shard's __metadata__ (a single file's own metadata).
  const std::map<std::string, std::string>& metadata() const { return shards_.front().metadata(); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  uint64_t total_file_bytes() const;

 private:
  std::vector<SafetensorsFile> shards_;
  std::vector<const TensorView*> tensors_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;
};

// A tensor to be written; `data` must hold exactly numel x dtype_size bytes (packed INT4 is
// stored as U8 with the packed shape, FP8 scales as F8_E4M3).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

// Writes one file atomically (temp file in the same directory, then rename). Tensors are stored
// in the given order; the header is space-padded so that the data starts 8-byte aligned.
void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `dir`/model.safetensors when everything fits in `max_shard_bytes`, else shards
// `dir`/model-0000i-of-0000n.safetensors plus model.safetensors.index.json (each shard atomic,
// the index last). A tensor larger than the limit gets a shard of its own. Every shard carries
// `metadata`. Returns the files written.
std::vector<std::filesystem::path> write_safetensors_checkpoint(
    const std::filesystem::path& dir, std::span<const TensorToWrite> tensors,
    const std::map<std::string, std::string>& metadata = {},
    uint64_t max_shard_bytes = 4ull << 30);

// Writes `bytes` to `path` atomically (temp file beside it, fsync, rename).
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes);

}  // namespace fireq
