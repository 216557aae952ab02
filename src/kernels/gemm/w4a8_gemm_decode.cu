// The decode kernel of the INT4 x FP8 GEMM (M <= kDecodeMaxM): memory-bound, so every design choice
// serves keeping many 16-byte weight loads in flight on every SM.
//
// Swap-AB on mma.sync.m16n8k32 FP8: 16 weight rows are the A operand, up to 8 tokens per n8 tile
// the B operand. A CTA of 8 warps owns one tile pair of the kernel layout (gemm.h: 2 x 64 rows, one
// 16-row slice per warp) and one K split. A slice's fragments for one 64-wide K block are 512
// contiguous bytes of a record, 16 per lane, which is exactly the lane's m16n8k32 A fragments for
// two k32 steps, so each lane streams its weights with one 16-byte load per block straight into
// registers, kPrefetchBlocks blocks ahead (no shared memory, no barriers for the weights).
//
// The k order inside a 64-wide block is free as long as A and B agree: the layout's word (s, h) of
// lane t holds k = 32s + 16h + 4t + {0..3}, which the mma reads as step s's k32 columns 16h + 4t..
// X is staged once per CTA into shared memory with each block's 4-byte words permuted the same way
// (word 4t + 2s + h), so the lane's B fragments of both steps are one 16-byte shared load.
//
// Numerics as the wgmma kernel and the CPU reference: exact INT4 -> FP8, an FP32 partial sum per K
// group promoted by the group's FP8 scale, a_scale * s_inv in the shared epilogue.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <mutex>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "w4a8_common.cuh"

namespace fireq::gemm {
namespace {

constexpr int kDecodeWarps = 8;  // 2 tiles x 4 slices of 16 rows: one tile pair
constexpr int kDecodeThreads = 32 * kDecodeWarps;
constexpr int kPrefetchBlocks = 8;  // 16-byte weight loads in flight per lane

// Read-once weight stream: skip L1, ask L2 for the whole 256-byte sector group.
__device__ __forceinline__ uint4 load_streaming(const uint8_t* address) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(address));
  return v;
}

__device__ __forceinline__ void mma_fp8_m16n8k32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two e4m3 group scales (rows r0 in the low byte, r0 + 8 in the high byte) -> floats. e4m3 is a
// subset of FP16, so the hardware conversion is exact (same values as fp8_e4m3_to_float).
__device__ __forceinline__ float2 decode_scale_pair(uint32_t codes) {
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  return __half22float2(__half2(raw));
}

// X[:, k_begin : k_begin + k_len] into shared memory, rows x_stride apart, each 64-byte block's
// words permuted as decode_x_word_position says (see the file comment).
__device__ __forceinline__ void stage_x(const KernelParams& p, uint8_t* x_shared, int k_begin, int k_len) {
  const int vectors_per_row = k_len / 16;
  for (int v = threadIdx.x; v < p.m * vectors_per_row; v += blockDim.x) {
    const int token = v / vectors_per_row;
    const int column = v % vectors_per_row;
    const uint4 data = __ldg(reinterpret_cast<const uint4*>(p.x + static_cast<size_t>(token) * p.k + k_begin) + column);
    uint32_t* row = reinterpret_cast<uint32_t*>(x_shared + token * p.x_stride);
    row[decode_x_word_position(column, 0)] = data.x;
    row[decode_x_word_position(column, 1)] = data.y;
    row[decode_x_word_position(column, 2)] = data.z;
    row[decode_x_word_position(column, 3)] = data.w;
  }
}

// Split-K: adds this CTA's sums into the FP32 workspace ([token][prepared row]); the last split of
// the tile pair to arrive applies the epilogue from the workspace and clears it (and the counter)
// for the next launch. Inlined (unlike the wgmma kernel's, no C7520 hazard here): a call would copy
// the kernel parameters to local memory in every thread.
template <int TokenTile>
__device__ __forceinline__ void decode_splitk_fixup(const KernelParams& p, float (&y)[TokenTile / 2], bool active,
                                                 int tile, int slice, int lane) {
  __shared__ int last_split;
  const int row0 = tile * kTileRows + slice * 16 + lane / 4;
  auto cell = [&](int i) {
    const int token = 8 * (i / 4) + 2 * (lane % 4) + (i % 2);
    return token < p.m ? &p.partial[static_cast<size_t>(token) * p.n + row0 + ((i % 4) < 2 ? 0 : 8)] : nullptr;
  };
  if (active)
#pragma unroll
    for (int i = 0; i < TokenTile / 2; ++i)
      if (float* c = cell(i)) atomicAdd(c, y[i]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_split = atomicAdd(&p.counters[blockIdx.x], 1) == p.splits - 1;
  __syncthreads();
  if (!last_split) return;
  __threadfence();
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;
  if (!active) return;
#pragma unroll
  for (int i = 0; i < TokenTile / 2; ++i) {
    float* c = cell(i);
    y[i] = c ? __ldcg(c) : 0.0f;
    if (c) __stcg(c, 0.0f);
  }
  store_tile<TokenTile>(p, y, tile, 0, slice, lane);
}

// Two CTAs per SM up to 16 tokens (~110 registers; three would spill), one for the 32- and
// 64-token tiles (2-4x the accumulators): decode_ctas_per_sm, which the dispatch assumes.
template <int TokenTile>
__global__ void __launch_bounds__(kDecodeThreads, decode_ctas_per_sm(TokenTile))
    w4a8_gemm_decode_kernel(const KernelParams p) {
  constexpr int kNTiles = TokenTile / 8;
  extern __shared__ uint4 x_shared_raw[];
  uint8_t* x_shared = reinterpret_cast<uint8_t*>(x_shared_raw);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pair = blockIdx.x;
  const int tile = 2 * pair + warp / 4;
  const int slice = warp % 4;
  const bool active = tile < p.n_tiles;  // the second tile of an odd pair is zero padding
  const int group_begin = blockIdx.y * p.groups_per_split;
  const int group_end = min(p.groups, group_begin + p.groups_per_split);
  const int blocks = (group_end - group_begin) * p.blocks_per_group;
  const int group_shift = p.blocks_per_group == 2 ? 1 : 0;
  const int block_mask = p.blocks_per_group - 1;
  const size_t record_bytes = pair_record_bytes(p.blocks_per_group);
  const uint8_t* records = p.weights + (static_cast<size_t>(pair) * p.groups + group_begin) * record_bytes;
  const int code_offset = decode_code_offset(warp, lane, 0, p.blocks_per_group);
  const int scale_offset = decode_scale_offset(warp, lane, p.blocks_per_group);

  uint4 codes[kPrefetchBlocks];
  uint32_t scales[kPrefetchBlocks];  // the block's group scales for rows r0 and r0 + 8
  auto load_block = [&](int b, int slot) {
    const uint8_t* record = records + static_cast<size_t>(b >> group_shift) * record_bytes;
    codes[slot] = load_streaming(record + code_offset + (b & block_mask) * kChunkBytes);
    scales[slot] = __ldg(record + scale_offset) | (static_cast<uint32_t>(__ldg(record + scale_offset + 8)) << 8);
  };
  // The first weight loads go out before X is staged: both latencies overlap.
  if (active)
#pragma unroll
    for (int s = 0; s < kPrefetchBlocks; ++s)
      if (s < blocks) load_block(s, s);
  stage_x(p, x_shared, group_begin * p.blocks_per_group * kBlockK, blocks * kBlockK);
  __syncthreads();

  float result[kNTiles][4] = {};
  float sums[kNTiles][4];
  const uint8_t* x_lane = x_shared + decode_x_lane_offset(lane, 0);
  if (active) {
    for (int b0 = 0; b0 < blocks; b0 += kPrefetchBlocks) {
#pragma unroll
      for (int s = 0; s < kPrefetchBlocks; ++s) {
        const int b = b0 + s;
        if (b >= blocks) break;
        if ((b & block_mask) == 0)
#pragma unroll
          for (int j = 0; j < kNTiles; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) sums[j][i] = 0.0f;
        const uint32_t a[2][4] = {
            {int4x4_to_fp8x4(codes[s].x), int4x4_to_fp8x4(codes[s].x >> 16), int4x4_to_fp8x4(codes[s].y),
             int4x4_to_fp8x4(codes[s].y >> 16)},
            {int4x4_to_fp8x4(codes[s].z), int4x4_to_fp8x4(codes[s].z >> 16), int4x4_to_fp8x4(codes[s].w),
             int4x4_to_fp8x4(codes[s].w >> 16)}};
        const uint32_t scale_codes = scales[s];
        if (b + kPrefetchBlocks < blocks) load_block(b + kPrefetchBlocks, s);
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          if (8 * j >= p.m) break;
          const int token = 8 * j + lane / 4;
          const uint4 x = token < p.m ? *reinterpret_cast<const uint4*>(x_lane + token * p.x_stride + b * kBlockK)
                                      : make_uint4(0, 0, 0, 0);
          mma_fp8_m16n8k32(sums[j], a[0], x.x, x.y);
          mma_fp8_m16n8k32(sums[j], a[1], x.z, x.w);
        }
        if ((b & block_mask) == block_mask) {
          const float2 sigma = decode_scale_pair(scale_codes);
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
            result[j][0] = fmaf(sigma.x, sums[j][0], result[j][0]);
            result[j][1] = fmaf(sigma.x, sums[j][1], result[j][1]);
            result[j][2] = fmaf(sigma.y, sums[j][2], result[j][2]);
            result[j][3] = fmaf(sigma.y, sums[j][3], result[j][3]);
          }
        }
      }
    }
  }

  float y[TokenTile / 2];
#pragma unroll
  for (int i = 0; i < TokenTile / 2; ++i) y[i] = result[i / 4][i % 4];
  if (p.splits == 1) {
    if (active) store_tile<TokenTile>(p, y, tile, 0, slice, lane);
  } else {
    decode_splitk_fixup<TokenTile>(p, y, active, tile, slice, lane);
  }
}

template <int TokenTile>
void launch(const KernelParams& p, dim3 grid, size_t shared_bytes, cudaStream_t stream) {
  static std::once_flag configured;
  std::call_once(configured, [] {
    FIREQ_CUDA_CHECK(cudaFuncSetAttribute(w4a8_gemm_decode_kernel<TokenTile>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, kDecodeXBudgetBytes));
  });
  w4a8_gemm_decode_kernel<TokenTile><<<grid, kDecodeThreads, shared_bytes, stream>>>(p);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_decode_gemm(KernelParams p, const GemmConfig& c, cudaStream_t stream) {
  if (p.m > c.token_tile || c.token_tile > kDecodeMaxM)
    fail("gemm_w4a8: decode token tile ", c.token_tile, " does not cover M = ", p.m, " (at most ", kDecodeMaxM, ")");
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0) fail("gemm_w4a8: the decode kernel needs X aligned to 16 bytes");
  p.x_stride = decode_x_stride(p.groups_per_split * p.blocks_per_group * kBlockK);
  const size_t shared_bytes = static_cast<size_t>(p.m) * p.x_stride;
  if (shared_bytes > kDecodeXBudgetBytes)
    fail("gemm_w4a8: decode X slice of ", shared_bytes, " bytes (M = ", p.m, ", ", p.groups_per_split,
         " groups per split) exceeds ", kDecodeXBudgetBytes, "; use more splits");
  const dim3 grid(p.tile_pairs, p.splits);
  switch (c.token_tile) {
    case 8: launch<8>(p, grid, shared_bytes, stream); break;
    case 16: launch<16>(p, grid, shared_bytes, stream); break;
    case 32: launch<32>(p, grid, shared_bytes, stream); break;
    case 64: launch<64>(p, grid, shared_bytes, stream); break;
    default: fail("gemm_w4a8: decode token tile ", c.token_tile, " is not 8, 16, 32 or 64");
  }
}

}  // namespace fireq::gemm
