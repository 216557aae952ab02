// GGUF (llama.cpp) files, versions 2 and 3: a memory-mapped reader of the metadata key/value
// store and the tensor table, with validation (magic, version, truncation, offsets, ggml types),
// and dequantization to float of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (the IQ*, TQ* and MXFP4 types are recognised, not decoded).
//
// ggml lists a tensor's dimensions fastest-varying first: a GGUF tensor with dims {576, 1536} is a
// row-major [1536][576] matrix. GgufTensor::shape() gives the row-major order (outermost first).
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
#include <variant>
#include <vector>

namespace fireq {

class MappedFile;

enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view gguf_type_name(GgufType type);

// One metadata value. Integers of every width are held as int64_t (UINT64 above INT64_MAX is
// refused), floats as double; arrays keep their element type (also when empty).
struct GgufValue {
  using Array = std::vector<GgufValue>;
  GgufType type = GgufType::UINT8;
  GgufType element_type = GgufType::UINT8;  // arrays only
  std::variant<int64_t, double, bool, std::string, Array> value;

  bool is_integer() const;
  bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
  bool is_array() const { return type == GgufType::ARRAY; }
};

// ggml tensor types (ids as in ggml.h). Only the ones listed are accepted; the reader knows the
// block layout of all of them, dequantize() handles the subset named at the top of this file.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};
std::string_view ggml_type_name(GgmlType type);
int64_t ggml_block_elements(GgmlType type);  // elements per block (1 for plain types)
int64_t ggml_block_bytes(GgmlType type);     // bytes per block
bool ggml_can_dequantize(GgmlType type);

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> dims;  // ggml order: dims[0] varies fastest
  uint64_t offset = 0;        // relative to the start of the data section
  std::span<const std::byte> data;

  int64_t numel() const;
  std::vector<int64_t> shape() const;  // row-major order: dims reversed
};

class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const;

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed getters: fail naming the file and key when the key is absent or of another type.
  // get_int accepts any integer type, get_float any integer or float, get_bool BOOL only.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;
  // Same, with a fallback when the key is absent (a key of the wrong type is still an error).
  std::string get_string(std::string_view key, const std::string& fallback) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // in file order
  const GgufTensor* find_tensor(std::string_view name) const;
  const GgufTensor& tensor(std::string_view name) const;  // fails naming the file when absent

 private:
  std::filesystem::path path_;
  std::unique_ptr<MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::map<std::string, size_t, std::less<>> metadata_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Dequantizes `n` elements (a multiple of the block size) of `type` from `blocks` into `out`.
void dequantize_ggml(GgmlType type, std::span<const std::byte> blocks, std::span<float> out);
// Whole tensor to float, row-major in shape() order; fails naming the tensor for unsupported types.
std::vector<float> dequantize(const GgufTensor& tensor);

// A human-readable value for `fireq inspect` (arrays abbreviated to their first few elements).
std::string gguf_value_to_string(const GgufValue& value, size_t max_array_elements = 8);

}  // namespace fireq
