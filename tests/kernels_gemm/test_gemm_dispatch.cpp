// The GEMM's dispatch table (host code, no GPU): valid configurations for every Llama shape.
#include <gtest/gtest.h>

#include <algorithm>

#include "fireq/error.h"
#include "fireq/kernels/gemm.h"

namespace fireq::gemm {
namespace {

const int kShapes[][3] = {{6144, 4096, 128}, {4096, 4096, 128}, {28672, 4096, 128}, {4096, 14336, 128},
                          {12288, 4096, 128}, {22016, 4096, 128}, {4096, 11008, 128}, {960, 576, 64},
                          {576, 1536, 64}, {57344, 8192, 128}};

// The wgmma kernel's invariants (any M when called directly; M > 64 through the full table).
void expect_valid_wgmma(const GemmConfig& c, int m, const int (&s)[3]) {
  const int groups = s[1] / s[2];
  EXPECT_EQ(c.kernel, GemmKernel::kWgmma);
  EXPECT_TRUE(c.token_tile == 16 || c.token_tile == 64 || c.token_tile == 128 || c.token_tile == 192);
  EXPECT_GE(c.token_tile, std::min(m, 16)) << "M=" << m;
  EXPECT_EQ((groups + c.groups_per_split - 1) / c.groups_per_split, c.splits) << "splits must cover K exactly";
  EXPECT_TRUE(c.token_tile <= 64 || c.splits == 1) << "the 128- and 192-token tiles have no split-K";
  if (s[2] == 64) {
    EXPECT_EQ(c.token_tile, 64) << "group 64 has only the 64-token kernel";
  }
  EXPECT_EQ(c.work_items, (s[0] / 64 + 1) / 2 * ((m + c.token_tile - 1) / c.token_tile) * c.splits);
  EXPECT_EQ(c.grid, std::min(132, c.work_items));
}

TEST(GemmDispatch, DecodeReachFollowsTheMeasurement) {
  EXPECT_EQ(decode_dispatch_max_m(6144, 4096), 32) << "Llama-3-8B q|k|v: the decode kernel won at M = 32";
  EXPECT_EQ(decode_dispatch_max_m(12288, 4096), 8) << "Llama-2-7B q|k|v: the wgmma kernel won at M = 16";
  EXPECT_EQ(decode_dispatch_max_m(28672, 4096), kDecodeDispatchMaxM) << "unlisted shapes keep the default";
  EXPECT_EQ(choose_gemm_config(32, 6144, 4096, 128, 132, true).kernel, GemmKernel::kDecodeMma);
  EXPECT_EQ(choose_gemm_config(16, 12288, 4096, 128, 132, true).kernel, GemmKernel::kWgmma);
  EXPECT_EQ(choose_gemm_config(32, 28672, 4096, 128, 132, true).kernel, GemmKernel::kWgmma);
}

TEST(GemmDispatch, ConfigurationsCoverTheProblem) {
  for (const auto& s : kShapes)
    for (const int m : {1, 4, 9, 16, 17, 32, 33, 64, 65, 256, 257, 1024, 16384}) {
      const GemmConfig c = choose_gemm_config(m, s[0], s[1], s[2], 132, true);
      const int groups = s[1] / s[2];
      if (m <= decode_dispatch_max_m(s[0], s[1])) {
        EXPECT_EQ(c.kernel, GemmKernel::kDecodeMma) << "M=" << m << " N=" << s[0];
        EXPECT_TRUE(c.token_tile == 8 || c.token_tile == 16 || c.token_tile == 32 || c.token_tile == 64);
        EXPECT_GE(c.token_tile, m);
        EXPECT_LT(c.token_tile, 2 * std::max(m, 8)) << "the smallest m16n8 tile count that covers M";
        EXPECT_EQ((groups + c.groups_per_split - 1) / c.groups_per_split, c.splits) << "splits must cover K exactly";
        EXPECT_EQ(c.work_items, (s[0] / 64 + 1) / 2 * c.splits);
        EXPECT_EQ(c.grid, c.work_items);
      } else {
        expect_valid_wgmma(c, m, s);
      }
      expect_valid_wgmma(choose_wgmma_config(m, s[0], s[1], s[2], 132, true), m, s);
      const GemmConfig no_workspace = choose_gemm_config(m, s[0], s[1], s[2], 132, false);
      EXPECT_EQ(no_workspace.splits, 1);
    }
  // Decode on a 4096-row weight: 32 tile pairs must be split to keep enough loads in flight.
  EXPECT_GT(choose_gemm_config(1, 4096, 4096, 128, 132, true).work_items, 100);
  EXPECT_GT(choose_wgmma_config(1, 4096, 4096, 128, 132, true).work_items, 100);
  // Llama-3-8B gate_up at M = 1: 224 tile pairs, more than one per SM: no split (no atomics).
  EXPECT_EQ(choose_gemm_config(1, 28672, 4096, 128, 132, true).splits, 1);
  // Llama-3-8B down at M = 1: 32 tile pairs, split until two CTAs per SM stream (8 splits).
  EXPECT_EQ(choose_gemm_config(1, 4096, 14336, 128, 132, true).splits, 8);
  // The decode kernel stages X per round: any K runs unsplit without a workspace.
  for (const int m : {1, 8, 9, 33, 64}) {
    const GemmConfig c = choose_decode_config(m, 4096, 14336, 128, 132, false);
    EXPECT_EQ(c.kernel, GemmKernel::kDecodeMma);
    EXPECT_EQ(c.splits, 1);
    EXPECT_GE(c.token_tile, m);
    EXPECT_LE(decode_shared_bytes(c.token_tile), 227 * 1024 / decode_ctas_per_sm(c.token_tile)) << "fits the SM";
  }
  EXPECT_THROW(choose_decode_config(65, 4096, 4096, 128, 132, true), Error);
  // Compute-bound sizes: every SM busy, no split-K once the token tiles fill the SMs.
  for (const int m : {1024, 4096, 16384}) {
    const GemmConfig c = choose_wgmma_config(m, 28672, 4096, 128, 132, true);
    EXPECT_GE(c.token_tile, 128) << "M=" << m;
    EXPECT_EQ(c.splits, 1) << "M=" << m;
    EXPECT_EQ(c.grid, 132);
  }
  EXPECT_THROW(choose_gemm_config(0, 4096, 4096, 128, 132, true), Error);
}

}  // namespace
}  // namespace fireq::gemm
