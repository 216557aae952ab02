// INT4 x FP8 GEMM for Hopper (sm_90a): Y[M,N] = epilogue(a_scale[m] * s_inv * sum_g sigma[n,g] *
// (X_fp8[m, g] . Q[n, g])), the numerics of gemm_reference.h (docs/kernels/GEMM.md).
//
// Two weight layouts:
//  - canonical (checkpoint, CPU reference): packed [N][K/2] bytes, low nibble = even k, two's
//    complement; scales [N][K/group] FP8 e4m3 codes.
//  - kernel layout (prepare_weights, on the GPU at load time): rows in tiles of 64 (one wgmma M),
//    tiles in pairs (the CTA's two consumer warpgroups), K in groups. One record per (pair, group),
//    records ordered [pair][group], so one bulk copy feeds a whole pipeline stage:
//      [tile 0: blocks_per_group chunks][tile 1: same][tile 0 scales: 64][tile 1 scales: 64]
//    A chunk is one 64-wide K block of a 64-row tile (2048 bytes); consumer thread t owns bytes
//    [16t, 16t+16): the INT4 codes of its wgmma A-operand registers for the block's two k32 steps.
//    N is padded to whole pairs with zero rows. For SwiGLU the gate|up rows are interleaved so that
//    each thread holds the gate and the up accumulator of the same output feature.
//    docs/kernels/GEMM.md has the exact byte map.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "fireq/kernels/gemm_reference.h"

namespace fireq::gemm {

constexpr int kTileRows = 64;   // weight rows per wgmma (M of the instruction)
constexpr int kBlockK = 64;     // K elements per pipeline stage
constexpr int kChunkBytes = kTileRows * kBlockK / 2;
// Bytes of one (tile pair, K group) record of the kernel layout.
constexpr int pair_record_bytes(int blocks_per_group) { return 2 * blocks_per_group * kChunkBytes + 2 * kTileRows; }
constexpr int kMaxPairRecordBytes = pair_record_bytes(2);

// Weights in the kernel layout, in device memory the caller owns.
struct PreparedWeights {
  int n = 0;           // rows of the canonical weight (2I for SwiGLU)
  int k = 0;
  int group_size = 0;  // 64 or 128
  bool swiglu_interleaved = false;
  uint8_t* data = nullptr;  // prepared_weight_bytes(n, k, group_size)
};

size_t prepared_weight_bytes(int n, int k, int group_size);

// Checks the shape (N a multiple of 64, K of the group size, group 64 or 128; SwiGLU: N/2 a
// multiple of 32) and converts canonical device buffers into `out` (its data allocated).
void prepare_weights(const uint8_t* packed, const uint8_t* scales, PreparedWeights& out, cudaStream_t stream);

// Split-K scratch: FP32 partial sums [M][N] and one arrival counter per output tile. Both must be
// zero when first used (the kernel leaves them zero again). Size with splitk_workspace_floats /
// splitk_counter_count for the largest M that should use split-K; smaller buffers disable it.
struct SplitKWorkspace {
  float* partial = nullptr;
  int* counters = nullptr;
  size_t partial_floats = 0;
  size_t counter_count = 0;
};
size_t splitk_workspace_floats(int max_m, int n);
size_t splitk_counter_count(int max_m, int n);

// Two kernels read the same kernel layout:
//  - kWgmma: the warp-specialized TMA + wgmma kernel (every M; the only one for M > 64);
//  - kDecodeMma: the decode kernel for M <= kDecodeMaxM: mma.sync m16n8k16 on exact FP16 images of
//    the INT4 and FP8 operands (Hopper has no FP8 mma.sync), each warp streams its 16 weight rows'
//    fragments straight from global memory into registers (no shared memory for the weights), X
//    staged per round of kDecodeRoundBlocks K blocks in shared memory (FP16, double-buffered); one
//    CTA per (tile pair, K split).
enum class GemmKernel { kWgmma, kDecodeMma };
constexpr int kDecodeMaxM = 64;
// The dispatch sends M <= decode_dispatch_max_m(N, K) to the decode kernel: kDecodeDispatchMaxM, or
// for the shapes where the H100 measurement said otherwise a measured bound (dispatch.cpp; see
// docs/kernels/GEMM.md "Dispatch table").
constexpr int kDecodeDispatchMaxM = 16;
int decode_dispatch_max_m(int n, int k);
// The decode kernel's weight ring: kDecodeStages stages of two 64-wide K blocks of a tile pair (one
// record of group 128 or two of group 64), filled by bulk copies. Its X staging: rounds of
// kDecodeRoundBlocks blocks, each token's round in FP16 padded by 16 bytes (rows 16 bytes apart
// modulo 128: the lanes of one 16-byte shared load hit distinct banks), two rounds in flight.
constexpr int kDecodeStages = 4;
constexpr int kDecodeStageBytes = 2 * pair_record_bytes(1);  // the larger of the two stage sizes
constexpr int kDecodeRoundBlocks = 8;
constexpr int kDecodeXRowBytes = kDecodeRoundBlocks * kBlockK * 2 + 16;
constexpr int decode_shared_bytes(int m) {
  return kDecodeStages * kDecodeStageBytes + 2 * m * kDecodeXRowBytes + 2 * kDecodeStages * 8;
}
// CTAs of the decode kernel resident per SM (its launch bounds; registers and shared memory allow
// them): latency is hidden by warps, so as many as fit.
constexpr int decode_ctas_per_sm(int token_tile) {
  return token_tile <= 8 ? 4 : (token_tile <= 16 ? 3 : (token_tile <= 32 ? 2 : 1));
}

// One launch configuration: kernel, token tile (wgmma N; for the decode kernel 8 x its m16n8
// tiles), split-K factor over groups, grid size.
struct GemmConfig {
  int token_tile = 0;  // wgmma: 16, 64 or 128; decode: 8, 16, 32 or 64
  int splits = 1;
  int groups_per_split = 0;
  int grid = 0;
  int work_items = 0;
  GemmKernel kernel = GemmKernel::kWgmma;
};

// The dispatch table (dispatch.cpp): M <= decode_dispatch_max_m(N, K) runs the decode kernel, else the
// wgmma kernel with a token tile by M; split-K so that the weight stream covers the SMs.
// workspace_ok says whether the split-K workspace is large enough for this M.
GemmConfig choose_gemm_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok);
// The wgmma kernel's part of the table alone (any M): the bench compares both kernels with it.
GemmConfig choose_wgmma_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok);
// The decode kernel's part alone (M <= kDecodeMaxM): token tile and split count.
GemmConfig choose_decode_config(int m, int n, int k, int group_size, int sm_count, bool workspace_ok);

struct GemmArgs {
  const uint8_t* x = nullptr;        // FP8 e4m3 [M][K], row stride K bytes
  const float* x_scales = nullptr;   // [M] per-token scales
  int m = 0;
  float s_inv = 1.0f;                // per-tensor 1/s_t of the weights
  Epilogue epilogue = Epilogue::kBf16;
  const uint16_t* residual = nullptr;  // BF16 [M][N], kResidualAdd only (may equal out)
  uint16_t* out = nullptr;             // BF16 [M][N] (or [M][N/2] for SwiGLU)
};

// Y = epilogue(X . W^T). `config` forces a configuration (the bench sweeps them); nullptr uses
// choose_gemm_config. Throws fireq::Error on bad shapes or pointers.
void gemm_w4a8(const GemmArgs& args, const PreparedWeights& weights, const SplitKWorkspace& workspace,
               cudaStream_t stream, const GemmConfig* config = nullptr);

// RMSNorm then per-token FP8 (scale = bf16(absmax/448)) for the next GEMM's input; with
// gamma == nullptr only the per-token FP8 quantization (the GEMM's optional FP8 output path).
// x, gamma: BF16 [M][K], [K]; out: FP8 [M][K]; out_scales: [M].
void rmsnorm_quantize_fp8(const uint16_t* x, const uint16_t* gamma, int m, int k, float eps, uint8_t* out,
                          float* out_scales, cudaStream_t stream);

}  // namespace fireq::gemm
