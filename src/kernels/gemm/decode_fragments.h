// The decode kernel's index math and the INT4 -> FP8 fragment conversion as host/device functions:
// the kernels call them, and the CPU test (tests/kernels_gemm/test_gemm_decode_emulation.cpp) runs
// the decode kernel's data flow through the same functions against the documented layout and the
// PTX fragment layouts of mma.m16n8k32, so the addressing is checked on every CI run.
#pragma once

#include <cstdint>

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

constexpr int kDecodeSliceBytes = kChunkBytes / 4;  // one warp's 16 rows of one 64-wide K block

// Byte offset inside a (tile pair, group) record of lane `lane`'s 16 code bytes for block `block`
// of the group: warp w reads the 16-row slice w % 4 of the pair's tile w / 4 (gemm.h's layout).
FIREQ_HD int decode_code_offset(int warp, int lane, int block, int blocks_per_group) {
  return ((warp / 4) * blocks_per_group + block) * kChunkBytes + (warp % 4) * kDecodeSliceBytes + lane * 16;
}

// Byte offset inside a record of the group scale of the lane's row r0 (row r0 + 8: 8 bytes further).
FIREQ_HD int decode_scale_offset(int warp, int lane, int blocks_per_group) {
  return 2 * blocks_per_group * kChunkBytes + (warp / 4) * kTileRows + (warp % 4) * 16 + lane / 4;
}

// X in shared memory: word `word` (0..3) of 16-byte vector `column` of a token's K slice goes to this
// word index of the token's row. Vector c of block c / 4 holds the layout's (s, h) = (c % 4 / 2,
// c % 2) for t = word, and lands at 4t + 2s + h: lane t's B fragments of both k32 steps side by side.
FIREQ_HD int decode_x_word_position(int column, int word) { return (column / 4) * 16 + 4 * word + column % 4; }

// Byte offset in a token's row of lane `lane`'s 16 B-fragment bytes for block `block`:
// words (b0, b1) of step 0, then of step 1.
FIREQ_HD int decode_x_lane_offset(int lane, int block) { return block * kBlockK + 16 * (lane % 4); }

}  // namespace fireq::gemm
