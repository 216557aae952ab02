// ggml block formats (32 elements per block, little-endian, fp16 scales):
//   Q8_0 {d; int8 q[32]}            x = d * q
//   Q4_0 {d; u8 qs[16]}             x = d * (nibble - 8)
//   Q4_1 {d; m; u8 qs[16]}          x = d * nibble + m
//   Q5_0 {d; u32 qh; u8 qs[16]}     x = d * ((nibble | fifth bit << 4) - 16)
//   Q5_1 {d; m; u32 qh; u8 qs[16]}  x = d * (nibble | fifth bit << 4) + m
// Element j < 16 of a block takes the low nibble of qs[j] and bit j of qh; element j + 16 the high
// nibble of qs[j] and bit j + 16 of qh.
#include <cstring>

#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/numerics.h"

namespace fireq {
namespace {

constexpr int kBlock = 32;

uint16_t load_u16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

uint32_t load_u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float load_f16(const std::byte* p) { return f16_to_float(load_u16(p)); }

// The 5-bit-or-4-bit code of element j of a 32-element block.
int nibble_at(const std::byte* qs, int j) {
  const auto byte = static_cast<uint8_t>(qs[j % 16]);
  return j < 16 ? (byte & 0xF) : (byte >> 4);
}

void dequantize_block(GgmlType type, const std::byte* block, float* out) {
  switch (type) {
    case GgmlType::Q8_0: {
      const float d = load_f16(block);
      for (int j = 0; j < kBlock; ++j) out[j] = d * static_cast<float>(static_cast<int8_t>(block[2 + j]));
      return;
    }
    case GgmlType::Q4_0: {
      const float d = load_f16(block);
      for (int j = 0; j < kBlock; ++j) out[j] = d * static_cast<float>(nibble_at(block + 2, j) - 8);
      return;
    }
    case GgmlType::Q4_1: {
      const float d = load_f16(block), m = load_f16(block + 2);
      for (int j = 0; j < kBlock; ++j) out[j] = d * static_cast<float>(nibble_at(block + 4, j)) + m;
      return;
    }
    case GgmlType::Q5_0: {
      const float d = load_f16(block);
      const uint32_t qh = load_u32(block + 2);
      for (int j = 0; j < kBlock; ++j) {
        const int code = nibble_at(block + 6, j) | static_cast<int>(((qh >> j) & 1u) << 4);
        out[j] = d * static_cast<float>(code - 16);
      }
      return;
    }
    case GgmlType::Q5_1: {
      const float d = load_f16(block), m = load_f16(block + 2);
      const uint32_t qh = load_u32(block + 4);
      for (int j = 0; j < kBlock; ++j) {
        const int code = nibble_at(block + 8, j) | static_cast<int>(((qh >> j) & 1u) << 4);
        out[j] = d * static_cast<float>(code) + m;
      }
      return;
    }
    default:
      fail("dequantize: no block decoder for ggml type ", ggml_type_name(type));
  }
}

}  // namespace

void dequantize_ggml(GgmlType type, std::span<const std::byte> blocks, std::span<float> out) {
  const int64_t block_elements = ggml_block_elements(type);
  const int64_t block_bytes = ggml_block_bytes(type);
  const int64_t n = static_cast<int64_t>(out.size());
  if (n % block_elements != 0 || static_cast<int64_t>(blocks.size()) != n / block_elements * block_bytes)
    fail("dequantize ", ggml_type_name(type), ": ", blocks.size(), " bytes do not hold ", n, " elements");
  const std::byte* src = blocks.data();
  switch (type) {
    case GgmlType::F32:
      std::memcpy(out.data(), src, out.size_bytes());
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = load_f16(src + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(load_u16(src + 2 * i));
      return;
    default:
      for (int64_t b = 0; b < n / block_elements; ++b)
        dequantize_block(type, src + b * block_bytes, out.data() + b * block_elements);
  }
}

std::vector<float> dequantize(const GgufTensor& tensor) {
  if (!ggml_can_dequantize(tensor.type))
    fail("tensor '", tensor.name, "': dequantization of ggml type ", ggml_type_name(tensor.type),
         " is not implemented (supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1)");
  std::vector<float> out(static_cast<size_t>(tensor.numel()));
  dequantize_ggml(tensor.type, tensor.data, out);
  return out;
}

}  // namespace fireq
