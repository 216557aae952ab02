#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>

#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/safetensors.h"

namespace fireq {
namespace {

constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;       // deeper nesting only comes from corrupt files

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;
  int64_t block_elements;
  int64_t block_bytes;
  bool can_dequantize;
};

// Block sizes as in ggml's type traits (checked against the gguf Python package's table).
constexpr GgmlTypeInfo kGgmlTypes[] = {
    {GgmlType::F32, "F32", 1, 4, true},         {GgmlType::F16, "F16", 1, 2, true},
    {GgmlType::Q4_0, "Q4_0", 32, 18, true},     {GgmlType::Q4_1, "Q4_1", 32, 20, true},
    {GgmlType::Q5_0, "Q5_0", 32, 22, true},     {GgmlType::Q5_1, "Q5_1", 32, 24, true},
    {GgmlType::Q8_0, "Q8_0", 32, 34, true},     {GgmlType::Q2_K, "Q2_K", 256, 84, true},
    {GgmlType::Q3_K, "Q3_K", 256, 110, true},   {GgmlType::Q4_K, "Q4_K", 256, 144, true},
    {GgmlType::Q5_K, "Q5_K", 256, 176, true},   {GgmlType::Q6_K, "Q6_K", 256, 210, true},
    {GgmlType::Q8_K, "Q8_K", 256, 292, true},   {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, false},
    {GgmlType::IQ2_XS, "IQ2_XS", 256, 74, false}, {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, false},
    {GgmlType::IQ1_S, "IQ1_S", 256, 50, false}, {GgmlType::IQ4_NL, "IQ4_NL", 32, 18, false},
    {GgmlType::IQ3_S, "IQ3_S", 256, 110, false}, {GgmlType::IQ2_S, "IQ2_S", 256, 82, false},
    {GgmlType::IQ4_XS, "IQ4_XS", 256, 136, false}, {GgmlType::I8, "I8", 1, 1, false},
    {GgmlType::I16, "I16", 1, 2, false},        {GgmlType::I32, "I32", 1, 4, false},
    {GgmlType::I64, "I64", 1, 8, false},        {GgmlType::F64, "F64", 1, 8, false},
    {GgmlType::IQ1_M, "IQ1_M", 256, 56, false}, {GgmlType::BF16, "BF16", 1, 2, true},
    {GgmlType::TQ1_0, "TQ1_0", 256, 54, false}, {GgmlType::TQ2_0, "TQ2_0", 256, 66, false},
    {GgmlType::MXFP4, "MXFP4", 32, 17, false},
};

const GgmlTypeInfo* find_ggml_type(uint32_t id) {
  for (const GgmlTypeInfo& t : kGgmlTypes)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

const GgmlTypeInfo& ggml_info(GgmlType type) {
  const GgmlTypeInfo* info = find_ggml_type(static_cast<uint32_t>(type));
  if (!info) fail("invalid ggml type id ", static_cast<uint32_t>(type));
  return *info;
}

// Bounds-checked little-endian reads over the mapped file; errors name the file and offset.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const char* what) {
    const uint64_t length = read<uint64_t>(what);
    need(length, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
    pos_ += length;
    return s;
  }

  // Fails unless `count` items of at least `min_item_bytes` each could still fit in the file, so
  // that a corrupt count cannot make us allocate gigabytes.
  void check_count(uint64_t count, uint64_t min_item_bytes, const std::string& what) const {
    if (count > remaining() / std::max<uint64_t>(min_item_bytes, 1))
      fail(file_, ": ", what, " count ", count, " at offset ", pos_, " cannot fit in the remaining ",
           remaining(), " bytes (corrupt or truncated file)");
  }

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

 private:
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(file_, ": truncated: reading ", what, " needs ", n, " bytes at offset ", pos_,
           " but the file is ", bytes_.size(), " bytes");
  }

  std::span<const std::byte> bytes_;
  const std::string& file_;
  uint64_t pos_ = 0;
};

bool is_valid_value_type(uint32_t type) { return type <= static_cast<uint32_t>(GgufType::FLOAT64); }

uint64_t min_value_bytes(GgufType type) {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::STRING: case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

GgufValue read_value(Cursor& in, GgufType type, const std::string& key, const std::string& file,
                     int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::UINT8: v.value = int64_t{in.read<uint8_t>("a uint8 value")}; break;
    case GgufType::INT8: v.value = int64_t{in.read<int8_t>("an int8 value")}; break;
    case GgufType::UINT16: v.value = int64_t{in.read<uint16_t>("a uint16 value")}; break;
    case GgufType::INT16: v.value = int64_t{in.read<int16_t>("an int16 value")}; break;
    case GgufType::UINT32: v.value = int64_t{in.read<uint32_t>("a uint32 value")}; break;
    case GgufType::INT32: v.value = int64_t{in.read<int32_t>("an int32 value")}; break;
    case GgufType::INT64: v.value = in.read<int64_t>("an int64 value"); break;
    case GgufType::UINT64: {
      const uint64_t u = in.read<uint64_t>("a uint64 value");
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(file, ": key '", key, "': uint64 value ", u, " is out of range");
      v.value = static_cast<int64_t>(u);
      break;
    }
    case GgufType::FLOAT32: v.value = double{in.read<float>("a float32 value")}; break;
    case GgufType::FLOAT64: v.value = in.read<double>("a float64 value"); break;
    case GgufType::BOOL: {
      const uint8_t b = in.read<uint8_t>("a bool value");
      if (b > 1) fail(file, ": key '", key, "': bool value ", int{b}, " is neither 0 nor 1");
      v.value = b == 1;
      break;
    }
    case GgufType::STRING: v.value = in.read_string("a string value"); break;
    case GgufType::ARRAY: {
      if (depth >= kMaxArrayNesting) fail(file, ": key '", key, "': arrays nested too deeply");
      const uint32_t element_type = in.read<uint32_t>("an array element type");
      if (!is_valid_value_type(element_type))
        fail(file, ": key '", key, "': unknown array element type ", element_type);
      v.element_type = static_cast<GgufType>(element_type);
      const uint64_t count = in.read<uint64_t>("an array length");
      in.check_count(count, min_value_bytes(v.element_type), "key '" + key + "': array");
      GgufValue::Array elements;
      elements.reserve(count);
      for (uint64_t i = 0; i < count; ++i)
        elements.push_back(read_value(in, v.element_type, key, file, depth + 1));
      v.value = std::move(elements);
      break;
    }
  }
  return v;
}

template <typename T>
const T& value_as(const GgufValue& v, const std::string& file, std::string_view key, const char* wanted) {
  if (const T* p = std::get_if<T>(&v.value)) return *p;
  fail(file, ": key '", key, "' is a ", gguf_type_name(v.type), ", expected ", wanted);
}

}  // namespace

std::string_view gguf_type_name(GgufType type) {
  static constexpr std::string_view kNames[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32",
                                                "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY",
                                                "UINT64", "INT64", "FLOAT64"};
  const auto i = static_cast<uint32_t>(type);
  return i < std::size(kNames) ? kNames[i] : "INVALID";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

std::string_view ggml_type_name(GgmlType type) { return ggml_info(type).name; }
int64_t ggml_block_elements(GgmlType type) { return ggml_info(type).block_elements; }
int64_t ggml_block_bytes(GgmlType type) { return ggml_info(type).block_bytes; }
bool ggml_can_dequantize(GgmlType type) { return ggml_info(type).can_dequantize; }

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (const int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensor::shape() const { return {dims.rbegin(), dims.rend()}; }

GgufFile::GgufFile(const std::filesystem::path& path)
    : path_(path), map_(std::make_unique<MappedFile>(path)) {
  const std::string file = path.string();
  const std::span<const std::byte> bytes = map_->bytes();
  Cursor in(bytes, file);
  if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0)
    fail(file, ": not a GGUF file (bad magic; expected the bytes 'GGUF' at offset 0)");
  in.read<uint32_t>("the magic");
  version_ = in.read<uint32_t>("the version");
  if (version_ != 2 && version_ != 3)
    fail(file, ": unsupported GGUF version ", version_, " (this reader handles versions 2 and 3)");
  const uint64_t tensor_count = in.read<uint64_t>("the tensor count");
  const uint64_t kv_count = in.read<uint64_t>("the metadata count");
  in.check_count(kv_count, 8 + 4 + 1, "metadata");
  in.check_count(tensor_count, 8 + 4 + 4 + 8, "tensor");

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = in.read_string("a metadata key");
    const uint32_t type = in.read<uint32_t>("a metadata value type");
    if (!is_valid_value_type(type)) fail(file, ": key '", key, "': unknown value type ", type);
    GgufValue value = read_value(in, static_cast<GgufType>(type), key, file, 0);
    if (!metadata_index_.emplace(key, metadata_.size()).second)
      fail(file, ": key '", key, "' appears twice in the metadata");
    metadata_.emplace_back(std::move(key), std::move(value));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer()) fail(file, ": key 'general.alignment' is not an integer");
    const int64_t alignment = std::get<int64_t>(a->value);
    if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
      fail(file, ": general.alignment ", alignment, " is not a positive power of two");
    alignment_ = static_cast<uint64_t>(alignment);
  }

  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensor t;
    t.name = in.read_string("a tensor name");
    const std::string where = file + ": tensor '" + t.name + "'";
    const uint32_t n_dims = in.read<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) fail(where, ": ", n_dims, " dimensions (1 to 4 allowed)");
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = in.read<uint64_t>("a tensor dimension");
      if (dim > (1ull << 40)) fail(where, ": dimension ", dim, " is implausibly large");
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    unsigned __int128 numel = 1;
    for (const int64_t d : t.dims) numel *= static_cast<unsigned __int128>(d);
    if (numel > (static_cast<unsigned __int128>(1) << 48))
      fail(where, ": ", n_dims, "-d shape has implausibly many elements");
    const uint32_t type_id = in.read<uint32_t>("a tensor type");
    const GgmlTypeInfo* type = find_ggml_type(type_id);
    if (!type) fail(where, ": unknown or unsupported ggml type id ", type_id);
    t.type = type->type;
    t.offset = in.read<uint64_t>("a tensor offset");
    if (t.offset % alignment_ != 0)
      fail(where, ": data offset ", t.offset, " is not a multiple of the alignment ", alignment_);
    if (t.dims[0] % type->block_elements != 0)
      fail(where, ": row length ", t.dims[0], " is not a multiple of the ", type->name,
           " block size ", type->block_elements);
    if (!tensor_index_.emplace(t.name, tensors_.size()).second)
      fail(where, ": name appears twice in the tensor table");
    tensors_.push_back(std::move(t));
  }

  const uint64_t data_start = (in.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > bytes.size() && !tensors_.empty())
    fail(file, ": truncated: the data section would start at ", data_start, " but the file is ",
         bytes.size(), " bytes");
  const uint64_t data_bytes = data_start <= bytes.size() ? bytes.size() - data_start : 0;
  std::vector<const GgufTensor*> by_offset;
  for (GgufTensor& t : tensors_) {
    const GgmlTypeInfo& type = ggml_info(t.type);
    const uint64_t bytes_needed =
        static_cast<uint64_t>(t.numel() / type.block_elements) * static_cast<uint64_t>(type.block_bytes);
    if (t.offset > data_bytes || bytes_needed > data_bytes - t.offset)
      fail(file, ": tensor '", t.name, "': data [", t.offset, ", ", t.offset + bytes_needed,
           ") runs past the end of the data section (", data_bytes, " bytes; file truncated?)");
    t.data = bytes.subspan(data_start + t.offset, bytes_needed);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& prev = *by_offset[i - 1];
    if (!prev.data.empty() && by_offset[i]->offset < prev.offset + prev.data.size())
      fail(file, ": tensor '", by_offset[i]->name, "': data at offset ", by_offset[i]->offset,
           " overlaps tensor '", prev.name, "' [", prev.offset, ", ", prev.offset + prev.data.size(), ")");
  }
}

GgufFile::~GgufFile() = default;
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;

uint64_t GgufFile::file_size() const { return map_->bytes().size(); }

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {

const GgufValue& require(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (!v) fail(f.path().string(), ": metadata key '", key, "' is missing");
  return *v;
}

const GgufValue::Array& require_array(const GgufFile& f, std::string_view key) {
  return value_as<GgufValue::Array>(require(f, key), f.path().string(), key, "an ARRAY");
}

}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  return value_as<std::string>(require(*this, key), path_.string(), key, "a STRING");
}

int64_t GgufFile::get_int(std::string_view key) const {
  return value_as<int64_t>(require(*this, key), path_.string(), key, "an integer");
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue& v = require(*this, key);
  if (v.is_integer()) return static_cast<double>(std::get<int64_t>(v.value));
  return value_as<double>(v, path_.string(), key, "a number");
}

bool GgufFile::get_bool(std::string_view key) const {
  return value_as<bool>(require(*this, key), path_.string(), key, "a BOOL");
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  std::vector<std::string> out;
  for (const GgufValue& e : require_array(*this, key))
    out.push_back(value_as<std::string>(e, path_.string(), key, "an array of STRING"));
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  std::vector<int64_t> out;
  for (const GgufValue& e : require_array(*this, key))
    out.push_back(value_as<int64_t>(e, path_.string(), key, "an array of integers"));
  return out;
}

std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  std::vector<double> out;
  for (const GgufValue& e : require_array(*this, key)) {
    if (e.is_integer()) out.push_back(static_cast<double>(std::get<int64_t>(e.value)));
    else out.push_back(value_as<double>(e, path_.string(), key, "an array of numbers"));
  }
  return out;
}

std::string GgufFile::get_string(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GgufFile::get_bool(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) fail(path_.string(), ": no tensor named '", name, "'");
  return *t;
}

std::string gguf_value_to_string(const GgufValue& value, size_t max_array_elements) {
  std::ostringstream out;
  if (const auto* i = std::get_if<int64_t>(&value.value)) out << *i;
  else if (const auto* d = std::get_if<double>(&value.value)) out << *d;
  else if (const auto* b = std::get_if<bool>(&value.value)) out << (*b ? "true" : "false");
  else if (const auto* s = std::get_if<std::string>(&value.value)) {
    constexpr size_t kMaxChars = 60;
    std::string shown = s->size() > kMaxChars ? s->substr(0, kMaxChars) + "..." : *s;
    for (char& c : shown)
      if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    out << '"' << shown << '"';
  } else {
    const auto& elements = std::get<GgufValue::Array>(value.value);
    out << gguf_type_name(value.element_type) << "[" << elements.size() << "] [";
    for (size_t i = 0; i < elements.size() && i < max_array_elements; ++i)
      out << (i ? ", " : "") << gguf_value_to_string(elements[i], max_array_elements);
    out << (elements.size() > max_array_elements ? ", ...]" : "]");
  }
  return out.str();
}

}  // namespace fireq
