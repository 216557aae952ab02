// The GEMM's dispatch table (host code, no GPU): valid configurations for every Llama shape.
#include <gtest/gtest.h>

#include "fireq/error.h"
#include "fireq/kernels/gemm.h"

namespace fireq::gemm {
namespace {

TEST(GemmDispatch, ConfigurationsCoverTheProblem) {
  const int shapes[][3] = {{6144, 4096, 128}, {4096, 4096, 128}, {28672, 4096, 128}, {4096, 14336, 128},
                           {12288, 4096, 128}, {22016, 4096, 128}, {4096, 11008, 128}, {960, 576, 64},
                           {576, 1536, 64}, {57344, 8192, 128}};
  for (const auto& s : shapes)
    for (const int m : {1, 4, 16, 17, 64, 65, 256, 257, 1024, 16384}) {
      const GemmConfig c = choose_gemm_config(m, s[0], s[1], s[2], 132, true);
      const int groups = s[1] / s[2];
      EXPECT_TRUE(c.token_tile == 16 || c.token_tile == 64 || c.token_tile == 128);
      EXPECT_GE(c.token_tile, std::min(m, 16)) << "M=" << m;
      EXPECT_EQ((groups + c.groups_per_split - 1) / c.groups_per_split, c.splits) << "splits must cover K exactly";
      EXPECT_TRUE(c.token_tile < 128 || c.splits == 1);
      EXPECT_EQ(c.work_items, (s[0] / 64 + 1) / 2 * ((m + c.token_tile - 1) / c.token_tile) * c.splits);
      EXPECT_EQ(c.grid, std::min(132, c.work_items));
      const GemmConfig no_workspace = choose_gemm_config(m, s[0], s[1], s[2], 132, false);
      EXPECT_EQ(no_workspace.splits, 1);
    }
  // Decode on a 4096-row weight: 32 tile pairs must be split to cover the SMs.
  EXPECT_GT(choose_gemm_config(1, 4096, 4096, 128, 132, true).work_items, 100);
  EXPECT_THROW(choose_gemm_config(0, 4096, 4096, 128, 132, true), Error);
}

}  // namespace
}  // namespace fireq::gemm
