// The decode kernel of the INT4 x FP8 GEMM (M <= kDecodeMaxM): memory-bound, so every design choice
// serves keeping the HBM weight stream full with a short instruction path per weight
// (bench/NOTES-gemm.md v6 and decode v6b-v8: what limited each version, measured).
//
// Swap-AB on mma.sync.m16n8k16 with f16 inputs: 16 weight rows are the A operand, up to 8 tokens
// per n8 tile the B operand. Hopper has no FP8 mma.sync (ptxas turns the e4m3 form into FP8 -> FP16
// conversions and this instruction), and INT4 codes and e4m3 values are exact in FP16, so the kernel
// converts INT4 straight to FP16 (1.5 instructions per weight) and stages X as FP16.
//
// A CTA owns one tile pair of the kernel layout (gemm.h: 2 x 64 rows) and one K split, one warp per
// 16-row slice. Thread 0 streams the pair's records (contiguous in the layout) with one bulk copy
// (TMA) per stage of two 64-wide K blocks into a ring of kDecodeStages stages: register loads of
// 16 bytes per lane stalled at ~2.2 TB/s however deep their ring (v6). A slice's codes for one block
// are 512 contiguous bytes of a record, 16 per lane: word j holds the lane's A fragment of k16 step
// j. Each warp copies its codes of a stage into registers and releases the stage at once.
//
// The k order inside a block is free as long as A and B agree: word j of lane t holds k = 16j + 4t +
// {0..3}, which the mma reads as step j's columns 2t, 2t+1, 2t+8, 2t+9. X is staged per round of
// kDecodeRoundBlocks blocks (double-buffered: the next round's FP8 vectors wait in registers while
// this round computes), each block's FP16 values permuted so that a lane's B fragments of the four
// steps are two 16-byte shared loads (decode_fragments.h).
//
// Numerics as the wgmma kernel and the CPU reference: exact INT4 and FP8 operands, an FP32 partial
// sum per K group promoted by the group's FP8 scale, a_scale * s_inv in the shared epilogue.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <mutex>

#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "ptx_sm90.cuh"
#include "w4a8_common.cuh"

namespace fireq::gemm {
namespace {

constexpr int kDecodeWarps = 8;  // 2 tiles x 4 slices of 16 rows: one tile pair
constexpr int kDecodeThreads = 32 * kDecodeWarps;

// D += A * B on f16 inputs with FP32 accumulation. Hopper has no FP8 mma.sync: ptxas lowers the
// e4m3 form to FP8 -> FP16 conversions plus this instruction, so the kernel feeds it FP16 directly.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes of shared memory at a 32-bit shared-window address (computed once per round, so the
// per-block loads are one instruction with a constant offset).
__device__ __forceinline__ uint4 load_shared_16(uint32_t address) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(address));
  return v;
}

// Two e4m3 group scales (rows r0 in the low byte, r0 + 8 in the high byte) -> floats. e4m3 is a
// subset of FP16, so the hardware conversion is exact (same values as fp8_e4m3_to_float).
__device__ __forceinline__ float2 decode_scale_pair(uint32_t codes) {
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  return __half22float2(__half2(raw));
}

// One round of X (the CTA's K range [k_begin, k_begin + 64 * round_blocks)) as FP8 16-byte vectors,
// held in registers while the previous round computes: vector v of the round is token v / (4 *
// round_blocks), column v % (4 * round_blocks); thread t holds vectors t, t + 256, ...
template <int TokenTile>
__device__ __forceinline__ void load_x_round(const KernelParams& p, uint4 (&vectors)[TokenTile / 8], int k_begin,
                                             int round_blocks) {
  const int columns = 4 * round_blocks;
#pragma unroll
  for (int i = 0; i < TokenTile / 8; ++i) {
    const int v = threadIdx.x + i * kDecodeThreads;
    if (v < p.m * columns)
      vectors[i] = __ldg(reinterpret_cast<const uint4*>(p.x + static_cast<size_t>(v / columns) * p.k + k_begin) +
                         v % columns);
  }
}

// ... then converted to FP16 and stored where decode_x_f16_offset says (the lanes' B fragments).
template <int TokenTile>
__device__ __forceinline__ void store_x_round(const KernelParams& p, const uint4 (&vectors)[TokenTile / 8],
                                              uint8_t* x_round, int round_blocks) {
  const int columns = 4 * round_blocks;
#pragma unroll
  for (int i = 0; i < TokenTile / 8; ++i) {
    const int v = threadIdx.x + i * kDecodeThreads;
    if (v >= p.m * columns) break;
    uint8_t* row = x_round + (v / columns) * kDecodeXRowBytes;
    const int column = v % columns;
    const uint32_t words[4] = {vectors[i].x, vectors[i].y, vectors[i].z, vectors[i].w};
#pragma unroll
    for (int w = 0; w < 4; ++w)
      *reinterpret_cast<uint2*>(row + decode_x_f16_offset(column, w)) =
          make_uint2(fp8x2_to_f16x2_b(words[w]), fp8x2_to_f16x2_b(words[w] >> 16));
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

// decode_ctas_per_sm(TokenTile) CTAs per SM (4, 3, 2, 1 for 8 to 64 tokens: registers and shared
// memory allow them; the dispatch assumes it). BlocksPerGroup (1 or 2: group 64 or 128) is a
// template argument so that every offset inside a stage is a constant.
template <int TokenTile, int BlocksPerGroup>
__global__ void __launch_bounds__(kDecodeThreads, decode_ctas_per_sm(TokenTile))
    w4a8_gemm_decode_kernel(const KernelParams p) {
  constexpr int kNTiles = TokenTile / 8;
  constexpr int kRecordBytes = pair_record_bytes(BlocksPerGroup);
  constexpr int kStageRecords = 2 / BlocksPerGroup;  // a stage is two 64-wide K blocks
  constexpr int kStageBytes = kStageRecords * kRecordBytes;
  constexpr int kStagesPerRound = kDecodeRoundBlocks / 2;
  extern __shared__ uint4 shared_raw[];
  uint8_t* ring = reinterpret_cast<uint8_t*>(shared_raw);                // kDecodeStages weight stages
  uint8_t* x_shared = ring + kDecodeStages * kDecodeStageBytes;          // two rounds of p.m FP16 rows
  uint64_t* full = reinterpret_cast<uint64_t*>(x_shared + 2 * p.m * kDecodeXRowBytes);
  uint64_t* empty = full + kDecodeStages;
  const int round_x_bytes = p.m * kDecodeXRowBytes;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pair = blockIdx.x;
  const int tile = 2 * pair + warp / 4;
  const int slice = warp % 4;
  const bool active = tile < p.n_tiles;  // the second tile of an odd pair is zero padding
  const int group_begin = blockIdx.y * p.groups_per_split;
  const int group_end = min(p.groups, group_begin + p.groups_per_split);
  const int blocks = (group_end - group_begin) * BlocksPerGroup;
  const int stages = (blocks + 1) / 2;
  const int k_begin = group_begin * BlocksPerGroup * kBlockK;
  // Stage i holds records [i * kStageRecords, ...) of the split; thread 0 issues its bulk copy.
  const uint8_t* records = p.weights + (static_cast<size_t>(pair) * p.groups + group_begin) * kRecordBytes;
  auto issue_stage = [&](int i) {
    const int slot = i % kDecodeStages;
    const uint32_t bytes = min(kStageRecords, group_end - group_begin - i * kStageRecords) * kRecordBytes;
    ptx::mbarrier_arrive_expect_tx(&full[slot], bytes);
    ptx::bulk_copy_g2s(ring + slot * kDecodeStageBytes, records + static_cast<size_t>(i) * kStageBytes, bytes, &full[slot]);
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kDecodeStages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], kDecodeWarps);
    }
    ptx::fence_barrier_init();
    for (int i = 0; i < min(stages, kDecodeStages); ++i) issue_stage(i);
  }
  uint4 x_next[kNTiles];
  load_x_round<TokenTile>(p, x_next, k_begin, min(blocks, kDecodeRoundBlocks));
  store_x_round<TokenTile>(p, x_next, x_shared, min(blocks, kDecodeRoundBlocks));
  __syncthreads();

  // The lane's B fragments of n8 tile j, block 0 of round 0 (decode_x_lane_offset); lanes of tokens
  // past M read the last token's row: finite values in D columns that are never stored.
  uint32_t x_lane[kNTiles];
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
    x_lane[j] = ptx::smem_address(x_shared) + min(8 * j + lane / 4, p.m - 1) * kDecodeXRowBytes +
                decode_x_lane_offset(lane, 0);
  // The lane's codes of block c of a stage, and its group scales (rows r0, r0 + 8) of record r.
  auto code_offset = [&](int c) {
    return (c / BlocksPerGroup) * kRecordBytes + decode_code_offset(warp, lane, c % BlocksPerGroup, BlocksPerGroup);
  };
  const int scale_offset = decode_scale_offset(warp, lane, BlocksPerGroup);
  float result[kNTiles][4] = {};
  float sums[kNTiles][4];
  const int rounds = (blocks + kDecodeRoundBlocks - 1) / kDecodeRoundBlocks;
  for (int round = 0; round < rounds; ++round) {
    const int b0 = round * kDecodeRoundBlocks;
    const int next_blocks = min(blocks - b0 - kDecodeRoundBlocks, kDecodeRoundBlocks);
    if (next_blocks > 0) load_x_round<TokenTile>(p, x_next, k_begin + (b0 + kDecodeRoundBlocks) * kBlockK, next_blocks);
    // Opaque to ptxas: otherwise it rematerializes the shared-window address for every block.
    uint32_t x_round[kNTiles];
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      x_round[j] = x_lane[j] + (round & 1) * round_x_bytes;
      asm volatile("" : "+r"(x_round[j]));
    }
#pragma unroll
    for (int t = 0; t < kStagesPerRound; ++t) {
      const int i = round * kStagesPerRound + t;
      if (i >= stages) break;
      const int slot = i % kDecodeStages;
      const uint8_t* stage = ring + slot * kDecodeStageBytes;
      ptx::mbarrier_wait(&full[slot], (i / kDecodeStages) & 1);
      uint4 codes[2];
      uint32_t scale_codes[2];  // of the group ending at block c (only those are read)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        codes[c] = *reinterpret_cast<const uint4*>(stage + code_offset(c));
        if (c % BlocksPerGroup == BlocksPerGroup - 1) {
          const uint8_t* scale = stage + (c / BlocksPerGroup) * kRecordBytes + scale_offset;
          scale_codes[c] = scale[0] | (static_cast<uint32_t>(scale[8]) << 8);
        }
      }
      __syncwarp();
      if (lane == 0) ptx::mbarrier_arrive(&empty[slot]);
      // Thread 0 refills the slot of the previous stage (released by most warps by now): a stage
      // lag keeps it from waiting on the slowest warp at every stage.
      if (threadIdx.x == 0 && i >= 1 && i - 1 + kDecodeStages < stages) {
        ptx::mbarrier_wait(&empty[(i - 1) % kDecodeStages], ((i - 1) / kDecodeStages) & 1);
        issue_stage(i - 1 + kDecodeStages);
      }
      __syncwarp();
      if (!active) continue;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int b = 2 * i + c;  // block of the split; block 2t + c of the round
        if (b >= blocks) break;
        if (c % BlocksPerGroup == 0)
#pragma unroll
          for (int j = 0; j < kNTiles; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) sums[j][e] = 0.0f;
        uint32_t a[4][4];  // k16 step j's A fragment from layout word j
        int4x8_to_f16_fragment(codes[c].x, a[0]);
        int4x8_to_f16_fragment(codes[c].y, a[1]);
        int4x8_to_f16_fragment(codes[c].z, a[2]);
        int4x8_to_f16_fragment(codes[c].w, a[3]);
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          if (8 * j >= p.m) break;
          const uint32_t b_address = x_round[j] + decode_x_lane_offset(0, 2 * t + c);
          const uint4 b01 = load_shared_16(b_address);
          const uint4 b23 = load_shared_16(b_address + 16);
          mma_f16_m16n8k16(sums[j], a[0], b01.x, b01.y);
          mma_f16_m16n8k16(sums[j], a[1], b01.z, b01.w);
          mma_f16_m16n8k16(sums[j], a[2], b23.x, b23.y);
          mma_f16_m16n8k16(sums[j], a[3], b23.z, b23.w);
        }
        if (c % BlocksPerGroup == BlocksPerGroup - 1) {
          const float2 sigma = decode_scale_pair(scale_codes[c]);
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
    // The other buffer was last read in the previous round, before the barrier that ended it.
    if (next_blocks > 0) store_x_round<TokenTile>(p, x_next, x_shared + ((round + 1) & 1) * round_x_bytes, next_blocks);
    __syncthreads();
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

template <int TokenTile, int BlocksPerGroup>
void launch(const KernelParams& p, dim3 grid, cudaStream_t stream) {
  static std::once_flag configured;
  std::call_once(configured, [] {
    FIREQ_CUDA_CHECK(cudaFuncSetAttribute(w4a8_gemm_decode_kernel<TokenTile, BlocksPerGroup>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, decode_shared_bytes(TokenTile)));
    // All of L1 as shared memory: decode_ctas_per_sm CTAs must fit (the weights bypass L1).
    FIREQ_CUDA_CHECK(cudaFuncSetAttribute(w4a8_gemm_decode_kernel<TokenTile, BlocksPerGroup>,
                                          cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  });
  w4a8_gemm_decode_kernel<TokenTile, BlocksPerGroup><<<grid, kDecodeThreads, decode_shared_bytes(p.m), stream>>>(p);
  FIREQ_CUDA_CHECK_LAUNCH();
}

template <int TokenTile>
void launch_tile(const KernelParams& p, dim3 grid, cudaStream_t stream) {
  if (p.blocks_per_group == 2)
    launch<TokenTile, 2>(p, grid, stream);
  else
    launch<TokenTile, 1>(p, grid, stream);
}

}  // namespace

void launch_decode_gemm(KernelParams p, const GemmConfig& c, cudaStream_t stream) {
  if (p.m > c.token_tile || c.token_tile > kDecodeMaxM)
    fail("gemm_w4a8: decode token tile ", c.token_tile, " does not cover M = ", p.m, " (at most ", kDecodeMaxM, ")");
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || p.k % 16 != 0)
    fail("gemm_w4a8: the decode kernel needs X aligned to 16 bytes (X at ", static_cast<const void*>(p.x), ", K = ", p.k, ")");
  const dim3 grid(p.tile_pairs, p.splits);
  switch (c.token_tile) {
    case 8: launch_tile<8>(p, grid, stream); break;
    case 16: launch_tile<16>(p, grid, stream); break;
    case 32: launch_tile<32>(p, grid, stream); break;
    case 64: launch_tile<64>(p, grid, stream); break;
    default: fail("gemm_w4a8: decode token tile ", c.token_tile, " is not 8, 16, 32 or 64");
  }
}

}  // namespace fireq::gemm
