// The INT4 x FP8 GEMM kernel for Hopper, swap-AB form: D^T[weight rows, tokens] = W . X^T, so the
// INT4 weights become the register-sourced wgmma A operand (converted to FP8 in registers) and
// the FP8 activations the shared-memory B operand, loaded by TMA.
//
// One CTA = one producer warpgroup (a single thread issues the copies) + two consumer warpgroups,
// each owning a 64-row weight tile of the CTA's 128-row pair; both share the token tile of X.
// Persistent: CTAs walk work items (weight-tile pair, token tile, K split) with a stride of the
// grid. Per group of K (64 or 128), the consumer issues wgmmas into a scratch accumulator and
// promotes it into the FP32 result with the group's scale: exact INT4 -> FP8 dequant, no second
// rounding (docs/kernels/GEMM.md). Split-K partial sums meet in an FP32 workspace; the last split
// to arrive applies the epilogue and clears the workspace for the next launch.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cute/arch/mma_sm90_gmma.hpp>
#include <utility>

#include "fireq/kernels/gemm.h"
#include "fireq/numerics.h"
#include "ptx_sm90.cuh"
#include "w4a8_common.cuh"

namespace fireq::gemm {


template <int TokenTile>
struct TileTraits {
  static_assert(TokenTile == 16 || TokenTile == 64 || TokenTile == 128, "one wgmma N per token tile");
  // One pipeline stage = one K group (up to 2 blocks of 64): X boxes + the pair's weight record.
  static constexpr int kXBlockBytes = TokenTile * kBlockK;  // TokenTile rows of 64 bytes
  static constexpr int kXBytes = 2 * kXBlockBytes;
  static constexpr int kWBytes = kMaxPairRecordBytes;
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kStages = 200 * 1024 / kStageBytes > 32 ? 32 : 200 * 1024 / kStageBytes;
  static constexpr int kAccumulators = TokenTile / 2;  // FP32 values of D per thread (64 x N / 128)
  // The split-K fix-up's unrolled addressing spills registers beside 2 x 64 accumulators; the
  // 128-token tile serves M > 256, where the token tiles alone fill the SMs.
  static constexpr bool kSplitK = TokenTile < 128;
  // Layout: [X stages][weight record stages][full barriers][empty barriers]
  static constexpr int kXOffset = 0;
  static constexpr int kWOffset = kStages * kXBytes;
  static constexpr int kBarrierOffset = kWOffset + kStages * kWBytes;
  static constexpr int kSharedBytes = kBarrierOffset + 2 * kStages * 8 + 1024;  // + alignment slack
  static_assert(kXBlockBytes % 1024 == 0, "X boxes stay aligned to the 64-byte swizzle period");
  static_assert(kWBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
};

template <int N>
struct Wgmma;
template <>
struct Wgmma<16> {
  using Op = cute::SM90::GMMA::MMA_64x16x32_F32E4M3E4M3_RS_TN<>;
};
template <>
struct Wgmma<64> {
  using Op = cute::SM90::GMMA::MMA_64x64x32_F32E4M3E4M3_RS_TN<>;
};
template <>
struct Wgmma<128> {
  using Op = cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_RS_TN<>;
};

template <int N, size_t... I>
__device__ __forceinline__ void wgmma_issue(const uint32_t (&a)[4], uint64_t desc, float (&d)[N / 2], bool accumulate,
                                            std::index_sequence<I...>) {
  Wgmma<N>::Op::fma(a[0], a[1], a[2], a[3], desc, d[I]...,
                    accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}

// The producer thread: for every K group of every work item, wait for a free stage, then copy
// X's boxes (one per 64-wide block) and the tile pair's weight record (codes and scales) in one
// bulk copy: few, large copies keep the copy engine off the critical path.
template <int TokenTile>
__device__ __forceinline__ void produce(const CUtensorMap& x_map, const KernelParams& p, uint8_t* smem, uint64_t* full,
                                        uint64_t* empty) {
  using T = TileTraits<TokenTile>;
  const int items_per_split = p.tile_pairs * p.token_tiles;
  const uint32_t record_bytes = pair_record_bytes(p.blocks_per_group);
  const uint32_t stage_bytes = p.blocks_per_group * T::kXBlockBytes + record_bytes;
  int stage = 0;
  uint32_t phase = 0;
  for (int item = blockIdx.x; item < p.work_items; item += gridDim.x) {
    const int split = item / items_per_split;
    const int pair = item % p.tile_pairs;
    const int token0 = (item % items_per_split) / p.tile_pairs * TokenTile;
    const int group_begin = split * p.groups_per_split;
    const int group_end = min(p.groups, group_begin + p.groups_per_split);
    for (int group = group_begin; group < group_end; ++group) {
      ptx::mbarrier_wait(&empty[stage], phase ^ 1);
      ptx::mbarrier_arrive_expect_tx(&full[stage], stage_bytes);
      for (int b = 0; b < p.blocks_per_group; ++b)
        ptx::tensor_copy_2d_g2s(smem + T::kXOffset + stage * T::kXBytes + b * T::kXBlockBytes, &x_map,
                                (group * p.blocks_per_group + b) * kBlockK, token0, &full[stage]);
      const size_t record = static_cast<size_t>(pair) * p.groups + group;
      ptx::bulk_copy_g2s(smem + T::kWOffset + stage * T::kWBytes, p.weights + record * record_bytes, record_bytes,
                         &full[stage]);
      if (++stage == T::kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }
}

// Split-K: adds a split's sums into the FP32 workspace ([token][weight row] of the kernel layout);
// the last split to arrive applies the epilogue and clears the workspace. Kept out of line: its
// divergent code inlined beside the wgmma loop makes ptxas serialize every wgmma (C7520); the sums
// cross the call through local memory, once per work item.
template <int TokenTile>
__device__ __noinline__ void splitk_fixup(const KernelParams& p, const float* sums, int tile, int token0, int consumer,
                                          int thread_in_group) {
  using T = TileTraits<TokenTile>;
  __shared__ int last_split_flag[2];  // per consumer: this split-K arrival was the last
  const int warp = thread_in_group / 32;
  const int lane = thread_in_group % 32;
  const int row0 = tile * kTileRows + warp * 16 + lane / 4;
#pragma unroll
  for (int i = 0; i < T::kAccumulators; ++i) {
    const int token = token0 + 8 * (i / 4) + 2 * (lane % 4) + (i % 2);
    if (token < p.m) atomicAdd(&p.partial[static_cast<size_t>(token) * p.n + row0 + ((i % 4) < 2 ? 0 : 8)], sums[i]);
  }
  __threadfence();
  ptx::named_barrier_sync(1 + consumer, 128);
  int* counter = &p.counters[(token0 / TokenTile) * p.n_tiles + tile];
  if (thread_in_group == 0) {
    const int arrived = atomicAdd(counter, 1);
    last_split_flag[consumer] = arrived == p.splits - 1;
  }
  ptx::named_barrier_sync(1 + consumer, 128);
  if (!last_split_flag[consumer]) return;
  float y[T::kAccumulators];
  __threadfence();
#pragma unroll
  for (int i = 0; i < T::kAccumulators; ++i) {
    const int token = token0 + 8 * (i / 4) + 2 * (lane % 4) + (i % 2);
    float* cell = &p.partial[static_cast<size_t>(token) * p.n + row0 + ((i % 4) < 2 ? 0 : 8)];
    y[i] = token < p.m ? __ldcg(cell) : 0.0f;
    if (token < p.m) __stcg(cell, 0.0f);
  }
  if (thread_in_group == 0) *counter = 0;
  store_tile<TokenTile>(p, y, tile, token0, warp, lane);
}

// A consumer warpgroup: its 64-row tile of the pair (`consumer` 0 or 1) against the token tile.
template <int TokenTile>
__device__ __forceinline__ void consume(const KernelParams& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                        int consumer, int thread_in_group) {
  using T = TileTraits<TokenTile>;
  const int items_per_split = p.tile_pairs * p.token_tiles;
  const int warp = thread_in_group / 32;
  const int lane = thread_in_group % 32;
  int stage = 0;
  uint32_t phase = 0;
  float result[T::kAccumulators];
  float group_sum[T::kAccumulators];

  for (int item = blockIdx.x; item < p.work_items; item += gridDim.x) {
    const int split = item / items_per_split;
    const int pair = item % p.tile_pairs;
    const int token0 = (item % items_per_split) / p.tile_pairs * TokenTile;
    const int tile = 2 * pair + consumer;
    const bool active = tile < p.n_tiles;
    const int group_begin = split * p.groups_per_split;
    const int group_end = min(p.groups, group_begin + p.groups_per_split);
#pragma unroll
    for (int i = 0; i < T::kAccumulators; ++i) result[i] = 0.0f;

    // Waits for the group's stage, converts the weights and issues the wgmmas into `sums` (one
    // commit group per K group). The converted fragments `a` are read by the tensor cores
    // asynchronously, so each keeps its own registers until the group's wgmmas have completed.
    auto issue_group = [&](float(&sums)[T::kAccumulators], uint32_t(&a)[2][2][4]) {
      const uint8_t* record = smem + T::kWOffset + stage * T::kWBytes;
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        if (b == p.blocks_per_group) break;  // 1 (group 64) or 2 (group 128) blocks
        // The wait sits inside the unrolled loop: hoisted above it, ptxas serializes the wgmmas.
        if (b == 0) ptx::mbarrier_wait(&full[stage], phase);
        // Issued by inactive warpgroups too (on a zero-padded tile, result unused): wgmma under a
        // divergent branch makes ptxas serialize every wgmma of the kernel (C7520).
        const uint4 codes = *reinterpret_cast<const uint4*>(record + (consumer * p.blocks_per_group + b) * kChunkBytes +
                                                            thread_in_group * 16);
        const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
        const uint64_t desc =
            ptx::smem_descriptor_k_major_sw64(smem + T::kXOffset + stage * T::kXBytes + b * T::kXBlockBytes);
#pragma unroll
        for (int step = 0; step < 2; ++step) {  // two k32 wgmmas per 64-wide block
          a[b][step][0] = int4x4_to_fp8x4(words[2 * step]);
          a[b][step][1] = int4x4_to_fp8x4(words[2 * step] >> 16);
          a[b][step][2] = int4x4_to_fp8x4(words[2 * step + 1]);
          a[b][step][3] = int4x4_to_fp8x4(words[2 * step + 1] >> 16);
#pragma unroll
          for (int i = 0; i < 4; ++i) ptx::fence_register(a[b][step][i]);
#pragma unroll
          for (int i = 0; i < T::kAccumulators; ++i) ptx::fence_register(sums[i]);
          ptx::wgmma_fence();
          wgmma_issue<TokenTile>(a[b][step], desc + 2 * step, sums, b > 0 || step > 0,
                                 std::make_index_sequence<T::kAccumulators>{});
        }
      }
      ptx::wgmma_commit();
    };
    // Promotes a finished group (its wgmmas waited for) by the group's scales and hands the
    // stage back to the producer.
    auto finish_group = [&](float(&sums)[T::kAccumulators]) {
#pragma unroll
      for (int i = 0; i < T::kAccumulators; ++i) ptx::fence_register(sums[i]);
      const uint8_t* scale =
          smem + T::kWOffset + stage * T::kWBytes + 2 * p.blocks_per_group * kChunkBytes + consumer * kTileRows;
      const float sigma0 = fp8_e4m3_to_float(scale[warp * 16 + lane / 4]);
      const float sigma1 = fp8_e4m3_to_float(scale[warp * 16 + lane / 4 + 8]);
#pragma unroll
      for (int i = 0; i < T::kAccumulators; ++i) result[i] = fmaf((i % 4) < 2 ? sigma0 : sigma1, sums[i], result[i]);
      __syncwarp();
      if (lane == 0) ptx::mbarrier_arrive(&empty[stage]);
    };

    // One wait per K group; the other consumer warpgroup keeps the tensor cores busy meanwhile.
    for (int group = group_begin; group < group_end; ++group) {
      uint32_t fragments[2][2][4];
      issue_group(group_sum, fragments);
      ptx::wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < 16; ++i) ptx::fence_register(fragments[i / 8][(i / 4) % 2][i % 4]);  // live until here
      finish_group(group_sum);
      stage = stage + 1 == T::kStages ? 0 : stage + 1;
      phase ^= stage == 0 ? 1u : 0u;
    }
    // No divergent `continue` back into the wgmma loop (C7520): inactive warpgroups fall through.
    if (!T::kSplitK || p.splits == 1) {
      if (active) store_tile<TokenTile>(p, result, tile, token0, warp, lane);
    } else if constexpr (T::kSplitK) {
      float sums[T::kAccumulators];  // handed over through local memory, see splitk_fixup
#pragma unroll
      for (int i = 0; i < T::kAccumulators; ++i) sums[i] = result[i];
      if (active) splitk_fixup<TokenTile>(p, sums, tile, token0, consumer, thread_in_group);
    }
  }
}

template <int TokenTile>
__global__ void __launch_bounds__(384, 1)
    w4a8_gemm_sm90_kernel(const __grid_constant__ CUtensorMap x_map, const KernelParams p) {
  using T = TileTraits<TokenTile>;
  extern __shared__ uint8_t shared_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + T::kBarrierOffset);
  uint64_t* empty = full + T::kStages;

  const int warpgroup = threadIdx.x / 128;
  const int thread_in_group = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    ptx::prefetch_tensor_map(&x_map);
    for (int s = 0; s < T::kStages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], 8);  // lane 0 of each of the 8 consumer warps
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<40>();
    if (thread_in_group == 0) produce<TokenTile>(x_map, p, smem, full, empty);
  } else {
    ptx::setmaxnreg_inc<232>();
    consume<TokenTile>(p, smem, full, empty, warpgroup - 1, thread_in_group);
  }
}

}  // namespace fireq::gemm
