// The decode kernel's index math and fragment conversions (INT4 -> FP8 for the wgmma kernel, INT4 ->
// FP16 and FP8 -> FP16 for the decode kernel) as host/device functions: the kernels call them, and
// the CPU test (tests/kernels_gemm/test_gemm_decode_emulation.cpp) runs the decode kernel's data flow
// through the same functions against the documented layout and the PTX fragment layouts of
// mma.m16n8k16, so the addressing and the conversions are checked on every CI run.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__)
#include <cuda_fp8.h>
#endif

#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"

namespace fireq::gemm {

// PTX prmt / __byte_perm with 3-bit selectors: result byte i = byte (selector nibble i) of {b:a}.
FIREQ_HD uint32_t byte_permute(uint32_t a, uint32_t b, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, selector);
#else
  const uint64_t bytes = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t result = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t source = (selector >> (4 * i)) & 0x7u;
    result |= static_cast<uint32_t>((bytes >> (8 * source)) & 0xFFu) << (8 * i);
  }
  return result;
#endif
}

// Four INT4 codes (two's complement nibbles in the low 16 bits of `nibbles`) -> four FP8 e4m3
// bytes, exactly: two byte-permute lookups (codes 0..7 and 8..15) and a third that picks per byte.
FIREQ_HD uint32_t int4x4_to_fp8x4(uint32_t nibbles) {
  constexpr uint32_t kPositive0 = 0x44403800u;  // fp8(0), fp8(1), fp8(2), fp8(3)
  constexpr uint32_t kPositive1 = 0x4E4C4A48u;  // fp8(4) .. fp8(7)
  constexpr uint32_t kNegative0 = 0xCACCCED0u;  // fp8(-8) .. fp8(-5)
  constexpr uint32_t kNegative1 = 0xB8C0C4C8u;  // fp8(-4) .. fp8(-1)
  const uint32_t index = nibbles & 0x7777u;
  const uint32_t positive = byte_permute(kPositive0, kPositive1, index);
  const uint32_t negative = byte_permute(kNegative0, kNegative1, index);
  const uint32_t pick = 0x3210u | ((nibbles & 0x8888u) >> 1);  // byte i from `negative` if bit 3 set
  return byte_permute(positive, negative, pick);
}

// PTX lop3 with the lookup table 0x6A: bitwise `mask ? (a ^ c) : c`, one instruction.
FIREQ_HD uint32_t xor_under_mask(uint32_t a, uint32_t mask, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(a), "r"(mask), "r"(c));
  return r;
#else
  return (mask & (a ^ c)) | (~mask & c);
#endif
}

// Two INT4 codes (two's complement nibbles at bits 0..3 and 20..23 of v) -> the FP16 pair
// (code0, 16 * code1), exact. One lop3 flips the sign bits (u = code ^ 8 = code + 8, offset binary)
// and ORs in the exponent of 1024, giving the halves 1024 + u0 and 1024 + 16 u1; one add of
// (-1032, -1152) leaves u0 - 8 = code0 and 16 u1 - 128 = 16 code1. The factor 16 of every high half
// is undone on the B side (fp8x2_to_f16x2_b), so the mma's products are exactly code * x.
FIREQ_HD uint32_t int4_pair_to_f16x2(uint32_t v) {
  const uint32_t biased = xor_under_mask(v, 0x00F0000Fu, 0x64806408u);
#if defined(__CUDA_ARCH__)
  uint32_t r;  // (-1032, -1152) = 0xE408, 0xE480 (ptxas makes it an immediate operand)
  asm("add.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(biased), "r"(0xE480E408u));
  return r;
#else
  const float lo = f16_to_float(static_cast<uint16_t>(biased)) - 1032.0f;
  const float hi = f16_to_float(static_cast<uint16_t>(biased >> 16)) - 1152.0f;
  return f16_from_float(lo) | (static_cast<uint32_t>(f16_from_float(hi)) << 16);
#endif
}

// One word of the kernel layout (gemm.h: low 16 bits the 4 codes of row r0 at the lane's 4 k,
// high 16 bits those of row r0 + 8) -> the lane's A fragment of mma.m16n8k16 with f16 inputs:
// a0 = r0's codes 0, 1; a1 = r0 + 8's codes 0, 1; a2 = r0's codes 2, 3; a3 = r0 + 8's codes 2, 3
// (each pair as int4_pair_to_f16x2 returns it). 12 instructions for 8 weights: 2 prmt, 2 shifts,
// 4 lop3, 4 f16x2 adds.
FIREQ_HD void int4x8_to_f16_fragment(uint32_t word, uint32_t (&a)[4]) {
  const uint32_t even_bytes = byte_permute(word, 0, 0x2020);  // b0 b2 b0 b2: codes 0, 1 at bits 0..3, 20..23
  const uint32_t odd_bytes = byte_permute(word, 0, 0x3131);   // b1 b3 b1 b3
  a[0] = int4_pair_to_f16x2(even_bytes);
  a[1] = int4_pair_to_f16x2(even_bytes >> 8);
  a[2] = int4_pair_to_f16x2(odd_bytes);
  a[3] = int4_pair_to_f16x2(odd_bytes >> 8);
}

// Two FP8 e4m3 codes (low 16 bits) -> the FP16 pair (x0, x1 / 16), exactly: e4m3 is a subset of
// FP16 and x / 16 stays a normal FP16 number (|x| >= 2^-9). The B operand's high halves meet the
// A operand's 16 * code (int4_pair_to_f16x2).
FIREQ_HD uint32_t fp8x2_to_f16x2_b(uint32_t codes) {
#if defined(__CUDA_ARCH__)
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  const uint32_t pair = static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
  uint32_t r;  // (1, 1/16) = 0x3C00, 0x2C00
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(pair), "r"(0x2C003C00u));
  return r;
#else
  return f16_from_float(fp8_e4m3_to_float(static_cast<uint8_t>(codes))) |
         (static_cast<uint32_t>(f16_from_float(fp8_e4m3_to_float(static_cast<uint8_t>(codes >> 8)) / 16.0f)) << 16);
#endif
}

constexpr int kDecodeSliceBytes = kChunkBytes / 4;  // one warp's 16 rows of one 64-wide K block

// Byte offset inside a (tile pair, group) record of lane `lane`'s 16 code bytes for block `block`
// of the group: warp w reads the 16-row slice w % 4 of the pair's tile w / 4 (gemm.h's layout).
FIREQ_HD int decode_code_offset(int warp, int lane, int block, int blocks_per_group) {
  return ((warp / 4) * blocks_per_group + block) * kChunkBytes + (warp % 4) * kDecodeSliceBytes + lane * 16;
}

// Byte offset inside a record of the group scale of the lane's row r0 (row r0 + 8: 8 bytes further).
FIREQ_HD int decode_scale_offset(int warp, int lane, int blocks_per_group) {
  return 2 * blocks_per_group * kChunkBytes + (warp % 4) * 16 + (warp / 4) * kTileRows + lane / 4;
}

// X in shared memory, FP16, one round (kDecodeRoundBlocks blocks) per token row. Word j of a lane's
// layout word holds k = 16j + 4t + {0..3} of the block (t = lane % 4), which the mma reads as its
// k16 step j's columns 2t, 2t+1 (codes 0, 1) and 2t+8, 2t+9 (codes 2, 3); so the lane's B fragment
// of step j is X at k = 16j + 4t + {0..3}, in that order. Staging puts it at byte 32t + 8j of the
// block's 128 bytes: the B fragments of all four steps are two 16-byte shared loads.
// Byte offset of the 8 FP16 bytes made of FP8 word `word` (0..3) of 16-byte vector `column` of the
// round's K slice (vector c: block c / 4, step c % 4).
FIREQ_HD int decode_x_f16_offset(int column, int word) { return (column / 4) * 2 * kBlockK + 32 * word + 8 * (column % 4); }

// Byte offset in a token's row of lane `lane`'s 32 B-fragment bytes for block `block` of the round.
FIREQ_HD int decode_x_lane_offset(int lane, int block) { return block * 2 * kBlockK + 32 * (lane % 4); }

}  // namespace fireq::gemm
