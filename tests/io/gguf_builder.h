// A small GGUF writer for tests: builds files from metadata values and raw tensor blocks, written
// from the format description (header, key/values, tensor infos, aligned data section).
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "fireq/gguf.h"
#include "test_util.h"

namespace fireq::testing {

inline GgufValue gguf_int(GgufType type, int64_t v) { return {type, GgufType::UINT8, v}; }
inline GgufValue gguf_float(GgufType type, double v) { return {type, GgufType::UINT8, v}; }
inline GgufValue gguf_bool(bool v) { return {GgufType::BOOL, GgufType::UINT8, v}; }
inline GgufValue gguf_string(std::string v) { return {GgufType::STRING, GgufType::UINT8, std::move(v)}; }
inline GgufValue gguf_array(GgufType element_type, GgufValue::Array elements) {
  return {GgufType::ARRAY, element_type, std::move(elements)};
}
inline GgufValue gguf_string_array(const std::vector<std::string>& strings) {
  GgufValue::Array elements;
  for (const std::string& s : strings) elements.push_back(gguf_string(s));
  return gguf_array(GgufType::STRING, std::move(elements));
}

// Random fp16 bits of a finite, moderate value (the block scales of real files).
inline uint16_t random_f16_scale() {
  std::uniform_int_distribution<int> exponent(5, 20), mantissa(0, 1023), sign(0, 1);
  return static_cast<uint16_t>((sign(rng()) << 15) | (exponent(rng()) << 10) | mantissa(rng()));
}

// Byte offsets of a block's fp16 scale fields (random bits there could decode to inf or NaN).
inline std::vector<int> fp16_scale_offsets(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q2_K: return {80, 82};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q6_K: return {208};
    case GgmlType::Q8_K: return {};  // a float32 scale, set separately
    default: return {0};
  }
}

// `blocks` random blocks of a ggml block type, with finite scale fields.
inline std::string random_ggml_blocks(GgmlType type, int64_t blocks) {
  const int64_t block_bytes = ggml_block_bytes(type);
  const auto noise = random_bytes(static_cast<size_t>(blocks * block_bytes));
  std::string bytes(reinterpret_cast<const char*>(noise.data()), noise.size());
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  for (int64_t b = 0; b < blocks; ++b) {
    char* block = bytes.data() + b * block_bytes;
    for (const int offset : fp16_scale_offsets(type)) {
      const uint16_t h = random_f16_scale();
      std::memcpy(block + offset, &h, 2);
    }
    if (type == GgmlType::Q8_K) {
      const float d = scale(rng());
      std::memcpy(block, &d, 4);
    }
  }
  return bytes;
}

class GgufBuilder {
 public:
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;  // ggml order
    std::string bytes;
    uint64_t offset_override = UINT64_MAX;
  };

  uint32_t version = 3;
  uint64_t alignment = 32;  // must match general.alignment when that key is added
  std::vector<std::pair<std::string, GgufValue>> metadata;
  std::vector<Tensor> tensors;

  void add(std::string key, GgufValue value) { metadata.emplace_back(std::move(key), std::move(value)); }
  Tensor& add_tensor(std::string name, GgmlType type, std::vector<uint64_t> dims, std::string bytes) {
    tensors.push_back({std::move(name), static_cast<uint32_t>(type), std::move(dims), std::move(bytes)});
    return tensors.back();
  }

  std::string build() const {
    std::string out = "GGUF";
    put<uint32_t>(out, version);
    put<uint64_t>(out, tensors.size());
    put<uint64_t>(out, metadata.size());
    for (const auto& [key, value] : metadata) {
      put_string(out, key);
      put<uint32_t>(out, static_cast<uint32_t>(value.type));
      put_value(out, value);
    }
    std::vector<uint64_t> offsets;
    uint64_t offset = 0;
    for (const Tensor& t : tensors) {
      offsets.push_back(t.offset_override != UINT64_MAX ? t.offset_override : offset);
      offset = align(offset + t.bytes.size());
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Tensor& t = tensors[i];
      put_string(out, t.name);
      put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
      for (const uint64_t d : t.dims) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out, offsets[i]);
    }
    out.resize(align(out.size()), '\0');
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].offset_override != UINT64_MAX) continue;
      out.resize(data_start + offsets[i], '\0');
      out += tensors[i].bytes;
    }
    return out;
  }

 private:
  uint64_t align(uint64_t n) const { return (n + alignment - 1) / alignment * alignment; }

  template <typename T>
  static void put(std::string& out, T value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out.append(bytes, sizeof(T));
  }
  static void put_string(std::string& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out += s;
  }
  static void put_value(std::string& out, const GgufValue& v) {
    switch (v.type) {
      case GgufType::UINT8: put<uint8_t>(out, static_cast<uint8_t>(std::get<int64_t>(v.value))); break;
      case GgufType::INT8: put<int8_t>(out, static_cast<int8_t>(std::get<int64_t>(v.value))); break;
      case GgufType::UINT16: put<uint16_t>(out, static_cast<uint16_t>(std::get<int64_t>(v.value))); break;
      case GgufType::INT16: put<int16_t>(out, static_cast<int16_t>(std::get<int64_t>(v.value))); break;
      case GgufType::UINT32: put<uint32_t>(out, static_cast<uint32_t>(std::get<int64_t>(v.value))); break;
      case GgufType::INT32: put<int32_t>(out, static_cast<int32_t>(std::get<int64_t>(v.value))); break;
      case GgufType::UINT64: put<uint64_t>(out, static_cast<uint64_t>(std::get<int64_t>(v.value))); break;
      case GgufType::INT64: put<int64_t>(out, std::get<int64_t>(v.value)); break;
      case GgufType::FLOAT32: put<float>(out, static_cast<float>(std::get<double>(v.value))); break;
      case GgufType::FLOAT64: put<double>(out, std::get<double>(v.value)); break;
      case GgufType::BOOL: put<uint8_t>(out, std::get<bool>(v.value) ? 1 : 0); break;
      case GgufType::STRING: put_string(out, std::get<std::string>(v.value)); break;
      case GgufType::ARRAY: {
        const auto& elements = std::get<GgufValue::Array>(v.value);
        put<uint32_t>(out, static_cast<uint32_t>(v.element_type));
        put<uint64_t>(out, elements.size());
        for (const GgufValue& e : elements) put_value(out, e);
        break;
      }
    }
  }
};

}  // namespace fireq::testing
