// Pieces both INT4 x FP8 kernels share: the launch parameters, the exact INT4 -> FP8 conversion
// of the weight fragments (the wgmma and the mma.sync A fragments have the same register layout),
// and the epilogue of one warp's 16 weight rows x token columns.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "decode_fragments.h"
#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"

namespace fireq::gemm {

struct KernelParams {
  const uint8_t* weights;  // kernel layout: one record per (tile pair, K group)
  const uint8_t* x;        // FP8 [M][K] (the decode kernel reads it directly; the wgmma kernel via TMA)
  const float* x_scales;
  const uint16_t* residual;
  uint16_t* out;
  float* partial;
  int* counters;
  float s_inv;
  int m, n, k;
  int n_tiles, tile_pairs, token_tiles;
  int groups, blocks_per_group, groups_per_split, splits;
  int work_items;
  Epilogue epilogue;
};

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// Epilogue for one thread's accumulators of the 16-row slice `warp` of 64-row weight tile `tile`
// (wgmma and mma.sync m16n8 fragments agree). Rows are output features, columns are tokens; value j of the fragment sits at row (j % 4 < 2 ? r0 : r0 + 8), column
// 8 * (j / 4) + 2 * (lane % 4) + j % 2.
template <int TokenTile>
__device__ __forceinline__ void store_tile(const KernelParams& p, const float (&y)[TokenTile / 2], int tile, int token0,
                                           int warp, int lane) {
  const int row0 = warp * 16 + lane / 4;
  const int n_out = p.epilogue == Epilogue::kSwiGlu ? p.n / 2 : p.n;
#pragma unroll
  for (int j = 0; j < TokenTile / 8; ++j) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int token = token0 + 8 * j + 2 * (lane % 4) + c;
      if (token >= p.m) continue;
      const float token_scale = p.x_scales[token] * p.s_inv;
      const float lo = y[4 * j + c] * token_scale;      // row0
      const float hi = y[4 * j + 2 + c] * token_scale;  // row0 + 8
      uint16_t* out_row = p.out + static_cast<size_t>(token) * n_out;
      if (p.epilogue == Epilogue::kSwiGlu) {
        const int feature = tile * 32 + warp * 8 + lane / 4;  // gate in row0, its up in row0 + 8
        out_row[feature] = bf16_from_float(silu(lo) * hi);
      } else {
        const int feature = tile * kTileRows + row0;
        float v0 = lo, v1 = hi;
        if (p.epilogue == Epilogue::kResidualAdd) {
          const uint16_t* res_row = p.residual + static_cast<size_t>(token) * n_out;
          v0 += bf16_to_float(res_row[feature]);
          v1 += bf16_to_float(res_row[feature + 8]);
        }
        out_row[feature] = bf16_from_float(v0);
        out_row[feature + 8] = bf16_from_float(v1);
      }
    }
  }
}

// The decode kernel's launcher (w4a8_gemm_decode.cu): p as gemm_w4a8 fills it for config c.
void launch_decode_gemm(KernelParams p, const GemmConfig& c, cudaStream_t stream);

}  // namespace fireq::gemm
