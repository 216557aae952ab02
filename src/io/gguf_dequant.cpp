// ggml block formats (little-endian, fp16 scales unless noted). 32-element blocks:
//   Q8_0 {d; int8 q[32]}            x = d * q
//   Q4_0 {d; u8 qs[16]}             x = d * (nibble - 8)
//   Q4_1 {d; m; u8 qs[16]}          x = d * nibble + m
//   Q5_0 {d; u32 qh; u8 qs[16]}     x = d * ((nibble | fifth bit << 4) - 16)
//   Q5_1 {d; m; u32 qh; u8 qs[16]}  x = d * (nibble | fifth bit << 4) + m
// Element j < 16 of a block takes the low nibble of qs[j] and bit j of qh; element j + 16 the high
// nibble of qs[j] and bit j + 16 of qh.
// 256-element "K" super-blocks hold 8 or 16 sub-blocks whose scales (and mins) are themselves
// quantized against the super-block's d (and dmin):
//   Q2_K {u8 scales[16]; u8 qs[64]; d; dmin}          x = d*(sc & 15) * q2 - dmin*(sc >> 4)
//   Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; d}  x = d*(scale6 - 32) * (q2 - (hbit ? 0 : 4))
//   Q4_K {d; dmin; u8 scales[12]; u8 qs[128]}         x = d*sc6 * q4 - dmin*m6
//   Q5_K {d; dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}  as Q4_K with a fifth bit
//   Q6_K {u8 ql[128]; u8 qh[64]; int8 scales[16]; d}  x = d*scale * (q6 - 32)
//   Q8_K {float d; int8 qs[256]; int16 bsums[16]}     x = d * q
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

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (of 8), packed in 12 bytes.
void scale_min_k4(int j, const uint8_t* packed, int& scale, int& min) {
  if (j < 4) {
    scale = packed[j] & 63;
    min = packed[j + 4] & 63;
  } else {
    scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// Q3_K: the signed 6-bit scale of sub-block j (of 16): low nibbles in bytes 0-7, high pairs in 8-11.
int scale_q3_k(int j, const uint8_t* packed) {
  const int low = j < 8 ? (packed[j] & 0xF) : (packed[j - 8] >> 4);
  const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (low | (high << 4)) - 32;
}

void dequantize_k_block(GgmlType type, const std::byte* block, float* out) {
  const auto* b = reinterpret_cast<const uint8_t*>(block);
  switch (type) {
    case GgmlType::Q2_K: {
      const uint8_t* scales = b;
      const uint8_t* qs = b + 16;
      const float d = load_f16(block + 80), dmin = load_f16(block + 82);
      for (int half = 0; half < 2; ++half)           // 128 elements per 32 bytes of qs
        for (int shift = 0; shift < 4; ++shift)      // 2 bits each
          for (int l = 0; l < 32; ++l) {
            const int e = half * 128 + shift * 32 + l;
            const uint8_t sc = scales[e / 16];
            const int q = (qs[half * 32 + l] >> (2 * shift)) & 3;
            out[e] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) - dmin * static_cast<float>(sc >> 4);
          }
      return;
    }
    case GgmlType::Q3_K: {
      const uint8_t* hmask = b;
      const uint8_t* qs = b + 32;
      const uint8_t* scales = b + 96;
      const float d = load_f16(block + 108);
      for (int half = 0; half < 2; ++half)
        for (int shift = 0; shift < 4; ++shift)
          for (int l = 0; l < 32; ++l) {
            const int e = half * 128 + shift * 32 + l;
            const int low = (qs[half * 32 + l] >> (2 * shift)) & 3;
            const bool high = (hmask[l] >> (e / 32)) & 1;
            out[e] = d * static_cast<float>(scale_q3_k(e / 16, scales)) * static_cast<float>(low - (high ? 0 : 4));
          }
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool five = type == GgmlType::Q5_K;
      const float d = load_f16(block), dmin = load_f16(block + 2);
      const uint8_t* scales = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16);
      for (int j = 0; j < 8; ++j) {  // sub-blocks of 32: pairs share 32 bytes of qs (low, high nibble)
        int scale, min;
        scale_min_k4(j, scales, scale, min);
        const float dj = d * static_cast<float>(scale), mj = dmin * static_cast<float>(min);
        for (int l = 0; l < 32; ++l) {
          int q = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
          if (five) q |= ((qh[l] >> j) & 1) << 4;
          out[j * 32 + l] = dj * static_cast<float>(q) - mj;
        }
      }
      return;
    }
    case GgmlType::Q6_K: {
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float d = load_f16(block + 208);
      for (int e = 0; e < 256; ++e) {
        const int half = e / 128, within = e % 128;
        const int low = (ql[half * 64 + within % 64] >> (4 * (within / 64))) & 0xF;
        const int high = (qh[half * 32 + within % 32] >> (2 * (within / 32))) & 3;
        out[e] = d * static_cast<float>(scales[e / 16]) * static_cast<float>((low | (high << 4)) - 32);
      }
      return;
    }
    case GgmlType::Q8_K: {
      float d;
      std::memcpy(&d, block, 4);
      for (int e = 0; e < 256; ++e) out[e] = d * static_cast<float>(static_cast<int8_t>(b[4 + e]));
      return;
    }
    default:
      fail("dequantize: no block decoder for ggml type ", ggml_type_name(type));
  }
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
      dequantize_k_block(type, block, out);
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
         " is not implemented (supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K-Q6_K Q8_K)");
  std::vector<float> out(static_cast<size_t>(tensor.numel()));
  dequantize_ggml(tensor.type, tensor.data, out);
  return out;
}

}  // namespace fireq
