// The decode kernel's data flow on the CPU: weights in the kernel layout built from its documented
// byte map (docs/kernels/GEMM.md), read through the kernel's own index functions
// (decode_fragments.h), converted by its INT4 -> FP8 routine, multiplied as mma.m16n8k32 defines
// its A / B / D fragments (PTX ISA; CUTLASS's SM89 MMA traits) and promoted per group. It must
// reproduce gemm_accumulate_reference bit for bit: it checks the addressing and the k permutation
// the device kernel relies on without a GPU.
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

uint8_t byte_of(uint32_t word, int i) { return static_cast<uint8_t>(word >> (8 * i)); }

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
    const int k_begin = group_begin * group_size, k_len = (group_end - group_begin) * group_size;
    // Shared memory as stage_x writes it.
    std::vector<uint32_t> x_shared(static_cast<size_t>(x.m) * k_len / 4);
    for (int token = 0; token < x.m; ++token)
      for (int column = 0; column < k_len / 16; ++column)
        for (int word = 0; word < 4; ++word)
          std::memcpy(&x_shared[static_cast<size_t>(token) * k_len / 4 + decode_x_word_position(column, word)],
                      &x.values[static_cast<size_t>(token) * k + k_begin + 16 * column + 4 * word], 4);
    for (int pair = 0; 2 * pair < n_tiles; ++pair)
      for (int warp = 0; warp < 8; ++warp) {
        const int tile = 2 * pair + warp / 4;
        if (tile >= n_tiles) continue;
        std::vector<float> result(static_cast<size_t>(x.m) * 16, 0.0f);  // [token][row of the slice]
        for (int g = group_begin; g < group_end; ++g) {
          const uint8_t* record = layout.data() + (static_cast<size_t>(pair) * groups + g) * record_bytes;
          std::vector<double> partial(static_cast<size_t>(x.m) * 16, 0.0);  // exact, as the reference
          for (int b = 0; b < blocks_per_group; ++b)
            for (int step = 0; step < 2; ++step) {
              float a[16][32], bm[32][64];  // the warp's A (16 x 32) and B (32 x tokens) of this mma
              for (int lane = 0; lane < 32; ++lane) {
                const int gid = lane / 4, t = lane % 4;
                uint32_t codes[4];
                std::memcpy(codes, record + decode_code_offset(warp, lane, b, blocks_per_group), 16);
                const uint32_t fragment[4] = {
                    int4x4_to_fp8x4(codes[2 * step]), int4x4_to_fp8x4(codes[2 * step] >> 16),
                    int4x4_to_fp8x4(codes[2 * step + 1]), int4x4_to_fp8x4(codes[2 * step + 1] >> 16)};
                for (int i = 0; i < 4; ++i) {  // a0: (gid, 4t+i) a1: (gid+8, 4t+i) a2/a3: columns + 16
                  a[gid][4 * t + i] = fp8_e4m3_to_float(byte_of(fragment[0], i));
                  a[gid + 8][4 * t + i] = fp8_e4m3_to_float(byte_of(fragment[1], i));
                  a[gid][16 + 4 * t + i] = fp8_e4m3_to_float(byte_of(fragment[2], i));
                  a[gid + 8][16 + 4 * t + i] = fp8_e4m3_to_float(byte_of(fragment[3], i));
                }
                for (int token = gid; token < 64; token += 8) {  // b0: rows 4t+i, b1: rows 16+4t+i
                  uint32_t words[4] = {0, 0, 0, 0};
                  if (token < x.m)
                    std::memcpy(words,
                                reinterpret_cast<const uint8_t*>(&x_shared[static_cast<size_t>(token) * k_len / 4]) +
                                    decode_x_lane_offset(lane, (g - group_begin) * blocks_per_group + b),
                                16);
                  for (int i = 0; i < 4; ++i) {
                    bm[4 * t + i][token] = fp8_e4m3_to_float(byte_of(words[2 * step], i));
                    bm[16 + 4 * t + i][token] = fp8_e4m3_to_float(byte_of(words[2 * step + 1], i));
                  }
                }
              }
              for (int row = 0; row < 16; ++row)
                for (int token = 0; token < x.m; ++token)
                  for (int c = 0; c < 32; ++c)
                    partial[static_cast<size_t>(token) * 16 + row] += static_cast<double>(a[row][c]) * bm[c][token];
            }
          for (int lane = 0; lane < 32; ++lane) {
            uint8_t sigma[2];
            sigma[0] = record[decode_scale_offset(warp, lane, blocks_per_group)];
            sigma[1] = record[decode_scale_offset(warp, lane, blocks_per_group) + 8];
            if (lane % 4) continue;  // one lane per row pair is enough here
            for (int half = 0; half < 2; ++half)
              for (int token = 0; token < x.m; ++token) {
                const size_t at = static_cast<size_t>(token) * 16 + lane / 4 + 8 * half;
                result[at] = std::fmaf(fp8_e4m3_to_float(sigma[half]), static_cast<float>(partial[at]), result[at]);
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

TEST(GemmDecodeEmulation, MatchesReferenceBitForBit) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Shape { int m, n, k, group; };
  for (const Shape s : {Shape{13, 320, 512, 128}, Shape{5, 192, 576, 64}, Shape{1, 64, 128, 128}}) {
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
