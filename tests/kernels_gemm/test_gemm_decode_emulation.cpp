// The decode kernel's data flow on the CPU: weights in the kernel layout built from its documented
// byte map (docs/kernels/GEMM.md), read through the kernel's own index functions
// (decode_fragments.h), converted by its INT4 -> FP16 and FP8 -> FP16 routines, X staged per round
// as the kernel stages it, multiplied as mma.m16n8k16 defines its A / B / D fragments (PTX ISA) and
// promoted per group. It must reproduce gemm_accumulate_reference bit for bit: it checks the
// addressing, the k permutation and the conversions the device kernel relies on without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "decode_fragments.h"
#include "fireq/kernels/gemm_reference.h"
#include "fireq/numerics.h"

namespace fireq::gemm {
namespace {

TEST(GemmDecodeEmulation, Int4ToFp8ConversionIsExact) {
  for (uint32_t nibbles = 0; nibbles < 0x10000u; ++nibbles) {
    const uint32_t fp8 = int4x4_to_fp8x4(nibbles);
    for (int i = 0; i < 4; ++i) {
      const int code = static_cast<int>((nibbles >> (4 * i)) & 0xF);
      const int q = code >= 8 ? code - 16 : code;
      ASSERT_EQ((fp8 >> (8 * i)) & 0xFF, fp8_e4m3_from_float(static_cast<float>(q))) << "nibbles " << nibbles;
    }
  }
}

// gemm.h's kernel layout, written from the documented byte map (no SwiGLU interleaving).
std::vector<uint8_t> documented_layout(const Int4Weights& w) {
  const int groups = w.k / w.group_size;
  const int blocks_per_group = w.group_size / kBlockK;
  const int n_tiles = w.n / kTileRows;
  const int pairs = (n_tiles + 1) / 2;
  const int record_bytes = pair_record_bytes(blocks_per_group);
  std::vector<uint8_t> out(static_cast<size_t>(pairs) * groups * record_bytes, 0);
  for (int pair = 0; pair < pairs; ++pair)
    for (int g = 0; g < groups; ++g) {
      uint8_t* record = out.data() + (static_cast<size_t>(pair) * groups + g) * record_bytes;
      for (int t = 0; t < 2; ++t) {
        const int tile = 2 * pair + t;
        if (tile >= n_tiles) continue;
        for (int b = 0; b < blocks_per_group; ++b)
          for (int thread = 0; thread < 128; ++thread)
            for (int j = 0; j < 4; ++j) {
              const int warp = thread / 32, lane = thread % 32, s = j / 2, h = j % 2;
              const int row = tile * kTileRows + 16 * warp + lane / 4;
              const int k = (g * blocks_per_group + b) * kBlockK + 32 * s + 16 * h + 4 * (lane % 4);
              uint8_t* word = record + (t * blocks_per_group + b) * kChunkBytes + 16 * thread + 4 * j;
              for (int half = 0; half < 2; ++half)
                std::memcpy(word + 2 * half, w.packed.data() + static_cast<size_t>(row + 8 * half) * w.k / 2 + k / 2, 2);
            }
        for (int r = 0; r < kTileRows; ++r)
          record[2 * blocks_per_group * kChunkBytes + t * kTileRows + r] =
              w.scales[static_cast<size_t>(tile * kTileRows + r) * groups + g];
      }
    }
  return out;
}

float low_half(uint32_t pair) { return f16_to_float(static_cast<uint16_t>(pair)); }
float high_half(uint32_t pair) { return f16_to_float(static_cast<uint16_t>(pair >> 16)); }

// y[m][n] before the epilogue, as the decode kernel computes it with `splits` K splits (the split
// sums are added in split order here; the GPU adds them by atomics in any order).
std::vector<float> emulate_decode(const std::vector<uint8_t>& layout, const Fp8Activations& x, int n, int k,
                                  int group_size, int splits) {
  const int groups = k / group_size;
  const int blocks_per_group = group_size / kBlockK;
  const int n_tiles = n / kTileRows;
  const int record_bytes = pair_record_bytes(blocks_per_group);
  const int per_split = (groups + splits - 1) / splits;
  std::vector<float> y(static_cast<size_t>(x.m) * n, 0.0f);
  for (int split = 0; split * per_split < groups; ++split) {
    const int group_begin = split * per_split;
    const int group_end = std::min(groups, group_begin + per_split);
    const int k_begin = group_begin * group_size;
    const int blocks = (group_end - group_begin) * blocks_per_group;
    for (int pair = 0; 2 * pair < n_tiles; ++pair)
      for (int warp = 0; warp < 8; ++warp) {
        const int tile = 2 * pair + warp / 4;
        if (tile >= n_tiles) continue;
        std::vector<float> result(static_cast<size_t>(x.m) * 16, 0.0f);  // [token][row of the slice]
        std::vector<double> partial(static_cast<size_t>(x.m) * 16, 0.0);  // exact, as the reference
        std::vector<uint8_t> x_shared(static_cast<size_t>(x.m) * kDecodeXRowBytes);
        for (int b = 0; b < blocks; ++b) {
          const int in_round = b % kDecodeRoundBlocks;
          if (in_round == 0) {  // store_x_round: this round's X as FP16 B fragments
            const int round_blocks = std::min(kDecodeRoundBlocks, blocks - b);
            for (int token = 0; token < x.m; ++token)
              for (int column = 0; column < 4 * round_blocks; ++column)
                for (int word = 0; word < 4; ++word) {
                  uint32_t fp8;
                  std::memcpy(&fp8, &x.values[static_cast<size_t>(token) * k + k_begin + b * kBlockK + 16 * column + 4 * word], 4);
                  const uint32_t f16[2] = {fp8x2_to_f16x2_b(fp8), fp8x2_to_f16x2_b(fp8 >> 16)};
                  std::memcpy(&x_shared[static_cast<size_t>(token) * kDecodeXRowBytes + decode_x_f16_offset(column, word)], f16, 8);
                }
          }
          const int g = group_begin + b / blocks_per_group;
          const uint8_t* record = layout.data() + (static_cast<size_t>(pair) * groups + g) * record_bytes;
          for (int step = 0; step < 4; ++step) {
            float a[16][16], bm[16][64];  // the warp's A (16 x 16) and B (16 x tokens) of this mma
            for (int lane = 0; lane < 32; ++lane) {
              const int gid = lane / 4, t = lane % 4;
              uint32_t codes[4];
              std::memcpy(codes, record + decode_code_offset(warp, lane, b % blocks_per_group, blocks_per_group), 16);
              uint32_t fragment[4];
              int4x8_to_f16_fragment(codes[step], fragment);
              // a0: (gid, 2t, 2t+1), a1: (gid+8, same), a2: (gid, 2t+8, 2t+9), a3: (gid+8, same)
              for (int r = 0; r < 4; ++r) {
                const int row = gid + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
                a[row][col] = low_half(fragment[r]);
                a[row][col + 1] = high_half(fragment[r]);
              }
              for (int token = gid; token < 64; token += 8) {  // b0: rows 2t, 2t+1; b1: rows 2t+8, 2t+9
                uint32_t b_regs[2] = {0, 0};
                if (token < x.m)
                  std::memcpy(b_regs,
                              &x_shared[static_cast<size_t>(token) * kDecodeXRowBytes + decode_x_lane_offset(lane, in_round) + 8 * step],
                              8);
                for (int r = 0; r < 2; ++r) {
                  bm[2 * t + 8 * r][token] = low_half(b_regs[r]);
                  bm[2 * t + 8 * r + 1][token] = high_half(b_regs[r]);
                }
              }
            }
            for (int row = 0; row < 16; ++row)
              for (int token = 0; token < x.m; ++token)
                for (int c = 0; c < 16; ++c)
                  partial[static_cast<size_t>(token) * 16 + row] += static_cast<double>(a[row][c]) * bm[c][token];
          }
          if (b % blocks_per_group != blocks_per_group - 1) continue;
          for (int lane = 0; lane < 32; lane += 4) {  // one lane per row pair is enough here
            const uint8_t sigma[2] = {record[decode_scale_offset(warp, lane, blocks_per_group)],
                                      record[decode_scale_offset(warp, lane, blocks_per_group) + 8]};
            for (int half = 0; half < 2; ++half)
              for (int token = 0; token < x.m; ++token) {
                const size_t at = static_cast<size_t>(token) * 16 + lane / 4 + 8 * half;
                result[at] = std::fmaf(fp8_e4m3_to_float(sigma[half]), static_cast<float>(partial[at]), result[at]);
                partial[at] = 0.0;
              }
          }
        }
        for (int token = 0; token < x.m; ++token)
          for (int row = 0; row < 16; ++row)
            y[static_cast<size_t>(token) * n + tile * kTileRows + (warp % 4) * 16 + row] +=
                result[static_cast<size_t>(token) * 16 + row];
      }
  }
  for (int token = 0; token < x.m; ++token)
    for (int col = 0; col < n; ++col) y[static_cast<size_t>(token) * n + col] *= x.scales[token];
  return y;
}

TEST(GemmDecodeEmulation, Int4ToFp16FragmentIsExact) {
  for (uint32_t low = 0; low < 0x10000u; ++low) {  // every row-r0 half, with varied row-r0+8 halves
    const uint32_t word = low | (((low * 0x9E37u) & 0xFFFFu) << 16);
    uint32_t a[4];
    int4x8_to_f16_fragment(word, a);
    for (int r = 0; r < 4; ++r) {
      const int nibble = (r % 2) * 4 + (r / 2) * 2;  // a0: codes 0,1; a1: 4,5; a2: 2,3; a3: 6,7
      auto code = [&](int i) {
        const int c = static_cast<int>((word >> (4 * i)) & 0xF);
        return static_cast<float>(c >= 8 ? c - 16 : c);
      };
      ASSERT_EQ(low_half(a[r]), code(nibble)) << std::hex << "word " << word << " register " << r;
      ASSERT_EQ(high_half(a[r]), 16.0f * code(nibble + 1)) << std::hex << "word " << word << " register " << r;
    }
  }
}

TEST(GemmDecodeEmulation, Fp8ToFp16BOperandIsExact) {
  for (uint32_t codes = 0; codes < 0x10000u; ++codes) {
    if ((codes & 0x7F) == 0x7F || (codes & 0x7F00) == 0x7F00) continue;  // NaN codes never reach the GEMM
    const uint32_t pair = fp8x2_to_f16x2_b(codes);
    ASSERT_EQ(low_half(pair), fp8_e4m3_to_float(static_cast<uint8_t>(codes))) << codes;
    ASSERT_EQ(high_half(pair) * 16.0f, fp8_e4m3_to_float(static_cast<uint8_t>(codes >> 8))) << codes;
  }
}

TEST(GemmDecodeEmulation, MatchesReferenceBitForBit) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Shape { int m, n, k, group; };
  for (const Shape s : {Shape{13, 320, 1536, 128}, Shape{5, 192, 576, 64}, Shape{1, 64, 128, 128}}) {
    std::vector<float> w(static_cast<size_t>(s.n) * s.k), xf(static_cast<size_t>(s.m) * s.k);
    for (float& v : w) v = normal(rng);
    for (float& v : xf) v = normal(rng);
    const Int4Weights weights = quantize_int4_weights(w.data(), s.n, s.k, s.group);
    const Fp8Activations x = quantize_fp8_rows(xf.data(), s.m, s.k);
    const std::vector<float> want = gemm_accumulate_reference(x, weights, 1.0f);
    const std::vector<float> got = emulate_decode(documented_layout(weights), x, s.n, s.k, s.group, 1);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << "M=" << s.m << " N=" << s.n << " K=" << s.k << " element " << i;
    // Split K: the same partial sums, regrouped; equal up to FP32 reassociation.
    const std::vector<float> split = emulate_decode(documented_layout(weights), x, s.n, s.k, s.group, 3);
    for (size_t i = 0; i < split.size(); ++i)
      ASSERT_NEAR(split[i], want[i], 1e-4f * (1.0f + std::fabs(want[i]))) << "split-K element " << i;
  }
}

}  // namespace
}  // namespace fireq::gemm
