// The INT4 x FP8 GEMM kernel for Hopper, swap-AB form: D^T[weight rows, tokens] = W . X^T, so the
// INT4 weights become the register-sourced wgmma A operand (converted to FP8 in registers) and
// the FP8 activations the shared-memory B operand, loaded by TMA.
//
// One CTA = one producer warpgroup (a single thread issues the copies) + two consumer warpgroups,
// each owning a 64-row weight tile of the CTA's 128-row pair; both share the token tile of X.
// Persistent: CTAs walk work items (weight-tile pair, token tile, K split) with a stride of the
// grid. Per group of K (64 or 128) and token unit, the consumer issues wgmmas into one of two
// alternating accumulator sets and promotes the previous unit's set into the FP32 result with the
// group's scale while the next runs: exact INT4 -> FP8 dequant, no second rounding
// (docs/kernels/GEMM.md). Split-K partial sums meet in an FP32 workspace; the last split
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
  static_assert(TokenTile == 16 || TokenTile == 64 || TokenTile == 128 || TokenTile == 192,
                "token tiles are one wgmma N (16, 64, 128) or three 64-token units (192)");
  // A unit is one wgmma N: tiles up to 128 tokens are one unit, the 192-token tile three units of
  // 64. Each (K group, unit) is one wgmma commit group with its own accumulator set, so a finished
  // unit can be promoted while the next one runs (two sets alternate; see consume()). Wide units
  // pay (every register-A wgmma re-sends its A fragments): one 128-token unit measured 9-29 % faster
  // than two of 64 at M = 512; two 96-token units for the 192-token tile spilled and were no faster.
  static constexpr int kUnitTokens = TokenTile <= 128 ? TokenTile : 64;
  static constexpr int kUnits = TokenTile / kUnitTokens;
  static constexpr int kUnitAccumulators = kUnitTokens / 2;  // FP32 values of one unit's D per thread
  static constexpr int kAccumulators = TokenTile / 2;         // FP32 values of D per thread (64 x N / 128)
  // Two accumulator sets of a 128-token unit, or three units' results of the 192-token tile, leave
  // no registers for the split-K hand-off; those tiles serve M > 64, where the dispatch does not
  // split K.
  static constexpr bool kSplitK = TokenTile <= 64;
  // One pipeline stage = one K group (up to 2 blocks of 64): one X box (TokenTile rows of the
  // group's 64 or 128 bytes) + the pair's weight record.
  static constexpr int kXBytes = TokenTile * 2 * kBlockK;
  static constexpr int kWBytes = kMaxPairRecordBytes;
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kStages = 200 * 1024 / kStageBytes > 32 ? 32 : 200 * 1024 / kStageBytes;
  // Layout: [X stages][weight record stages][full barriers][empty barriers]
  static constexpr int kXOffset = 0;
  static constexpr int kWOffset = kStages * kXBytes;
  static constexpr int kBarrierOffset = kWOffset + kStages * kWBytes;
  static constexpr int kSharedBytes = kBarrierOffset + 2 * kStages * 8 + 1024;  // + alignment slack
  static_assert(kXBytes % 1024 == 0, "X boxes stay aligned to the swizzle period");
  static_assert(kUnitTokens * kBlockK % 512 == 0, "units start on a swizzle atom");
  static_assert(kWBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
};

// Work items in bands of kBandPairs tile pairs, token tiles walked inside a band: the SMs of one
// wave then share a few MB of weights and X tiles in L2 (walking all pairs of one token tile
// first re-reads every weight from HBM once per token tile when the weights exceed L2).
constexpr int kBandPairs = 32;

struct WorkItem {
  int pair, token0, group_begin, group_end;
};

template <int TokenTile>
__device__ __forceinline__ WorkItem work_item(const KernelParams& p, int item) {
  const int items_per_split = p.tile_pairs * p.token_tiles;
  const int split = item / items_per_split;
  const int r = item % items_per_split;
  const int band = r / (kBandPairs * p.token_tiles);
  const int inner = r % (kBandPairs * p.token_tiles);
  const int band_pairs = min(kBandPairs, p.tile_pairs - band * kBandPairs);
  WorkItem w;
  w.pair = band * kBandPairs + inner % band_pairs;
  w.token0 = inner / band_pairs * TokenTile;
  w.group_begin = split * p.groups_per_split;
  w.group_end = min(p.groups, w.group_begin + p.groups_per_split);
  return w;
}

// One 32-bit word of the kernel layout (4 INT4 codes of row r0 in the low half, the same k of row
// r0 + 8 in the high half) -> its two FP8x4 A-fragment registers, exactly: the tables of
// int4x4_to_fp8x4, with the index and sign-select masks computed once for both halves (byte
// permutes read only the low 16 bits of their selector): 11 instructions per 8 weights instead of 15.
// Every selector nibble stays in 0..7 (index masked to 3 bits, pick = 0..3 or 4..7).
// A byte permute takes one table word as an immediate; the other (kPositive0, kNegative0) comes in
// registers the caller keeps (`low_tables`), so ptxas does not rematerialize it for every call.
constexpr uint32_t kPositive0 = 0x44403800u;  // fp8(0), fp8(1), fp8(2), fp8(3)
constexpr uint32_t kNegative0 = 0xCACCCED0u;  // fp8(-8) .. fp8(-5)
__device__ __forceinline__ uint2 int4x8_to_fp8x8(uint32_t codes, uint2 low_tables) {
  const uint32_t kPositive0 = low_tables.x, kNegative0 = low_tables.y;
  constexpr uint32_t kPositive1 = 0x4E4C4A48u;  // fp8(4) .. fp8(7)
  constexpr uint32_t kNegative1 = 0xB8C0C4C8u;  // fp8(-4) .. fp8(-1)
  const uint32_t index = codes & 0x77777777u;
  const uint32_t pick = ((codes >> 1) & 0x44444444u) | 0x32103210u;  // byte i + 4 (negative) if bit 3 set
  const uint32_t index_high = index >> 16, pick_high = pick >> 16;
  uint2 fp8;
  using ptx::permute_bytes;
  fp8.x = permute_bytes(permute_bytes(kPositive0, kPositive1, index), permute_bytes(kNegative0, kNegative1, index), pick);
  fp8.y = permute_bytes(permute_bytes(kPositive0, kPositive1, index_high),
                        permute_bytes(kNegative0, kNegative1, index_high), pick_high);
  return fp8;
}

// Calls f(std::integral_constant<int, i>) for i = 0 .. N-1: loop bodies whose register-array indices
// must be compile-time constants.
template <typename F, int... I>
__device__ __forceinline__ void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

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
__device__ __forceinline__ void wgmma_issue(const uint32_t* a, uint64_t desc, float (&d)[N / 2], bool accumulate,
                                            std::index_sequence<I...>) {
  Wgmma<N>::Op::fma(a[0], a[1], a[2], a[3], desc, d[I]...,
                    accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}

// The producer thread: for every K group of every work item, wait for a free stage, then copy
// X's boxes (one per 64-wide block) and the tile pair's weight record (codes and scales) in one
// bulk copy: few, large copies keep the copy engine off the critical path.
template <int TokenTile, int Blocks>
__device__ __forceinline__ void produce(const CUtensorMap& x_map, const KernelParams& p, uint8_t* smem, uint64_t* full,
                                        uint64_t* empty) {
  using T = TileTraits<TokenTile>;
  constexpr uint32_t record_bytes = pair_record_bytes(Blocks);
  constexpr uint32_t stage_bytes = TokenTile * Blocks * kBlockK + record_bytes;
  int stage = 0;
  uint32_t phase = 0;
  for (int item = blockIdx.x; item < p.work_items; item += gridDim.x) {
    const WorkItem w = work_item<TokenTile>(p, item);
    for (int group = w.group_begin; group < w.group_end; ++group) {
      ptx::mbarrier_wait(&empty[stage], phase ^ 1);
      ptx::mbarrier_arrive_expect_tx(&full[stage], stage_bytes);
      ptx::tensor_copy_2d_g2s(smem + T::kXOffset + stage * T::kXBytes, &x_map, group * Blocks * kBlockK, w.token0,
                              &full[stage]);
      const size_t record = static_cast<size_t>(w.pair) * p.groups + group;
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
//
// The K loop runs over units (group g, token unit u), each one wgmma commit group into one of two
// accumulator sets, alternating. After issuing unit n the warpgroup waits only for unit n - 1
// (`wait_group 1`) and promotes it (`fmaf(sigma, sum, result)`) while unit n runs, so the tensor
// cores see no gap at group boundaries. Group g's converted A fragments and scales live in register
// set g % 2: the next group is converted while this group's units are still reading theirs. Every
// index into the register arrays is a compile-time constant (the loop body is written out for
// both parities), and no register an in-flight wgmma reads or writes is touched before its wait.
template <int TokenTile, int Blocks>
__device__ __forceinline__ void consume(const KernelParams& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                        int consumer, int thread_in_group) {
  using T = TileTraits<TokenTile>;
  constexpr int kUnits = T::kUnits;
  constexpr int kUnitAcc = T::kUnitAccumulators;
  const int warp = thread_in_group / 32;
  const int lane = thread_in_group % 32;
  int read_stage = 0;  // next stage to convert
  uint32_t read_phase = 0;
  int release_stage = 0;  // next stage to hand back to the producer
  float result[T::kAccumulators];
  float sums[2][kUnitAcc];
  uint32_t fragments[2][8 * Blocks];  // [group parity][block * 8 + step * 4 + register]
  float sigma[2][2];          // [group parity][row r0, row r0 + 8]
  int stage_of[2];            // [group parity] the stage holding the group's X
  uint2 low_tables = make_uint2(kPositive0, kNegative0);  // opaque to ptxas: kept in two registers
  ptx::fence_register(low_tables.x);
  ptx::fence_register(low_tables.y);

  // Waits for the next stage, converts this warpgroup's INT4 codes of the group into FP8 A
  // fragments and decodes its two row scales.
  auto load_group = [&](auto parity) {
    constexpr int P = decltype(parity)::value;
    ptx::mbarrier_wait(&full[read_stage], read_phase);
    const uint32_t record = ptx::smem_address(smem) + T::kWOffset + read_stage * T::kWBytes;
#pragma unroll
    for (int b = 0; b < Blocks; ++b) {
      const uint4 codes = ptx::load_shared_u128(record + (consumer * Blocks + b) * kChunkBytes + thread_in_group * 16);
      const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // word j = step j / 2, registers 2 (j % 2) and 2 (j % 2) + 1
        const uint2 fp8 = int4x8_to_fp8x8(words[j], low_tables);
        fragments[P][b * 8 + j * 2] = fp8.x;
        fragments[P][b * 8 + j * 2 + 1] = fp8.y;
      }
    }
    const uint32_t scale = record + 2 * Blocks * kChunkBytes + consumer * kTileRows + warp * 16 + lane / 4;
    const float2 s =
        ptx::e4m3x2_to_float2(static_cast<uint16_t>(ptx::load_shared_u8(scale) | (ptx::load_shared_u8(scale + 8) << 8)));
    sigma[P][0] = s.x;
    sigma[P][1] = s.y;
    stage_of[P] = read_stage;
    if (++read_stage == T::kStages) {
      read_stage = 0;
      read_phase ^= 1;
    }
  };
  // Issues unit `unit` of the group in fragment set P into accumulator set S, as one commit group.
  auto issue_unit = [&](auto parity, auto set, auto unit) {
    constexpr int P = decltype(parity)::value, S = decltype(set)::value, U = decltype(unit)::value;
    // The unit's 64 token rows of the group's X box (rows of Blocks * 64 bytes, swizzled to match).
    const uint8_t* x = smem + T::kXOffset + stage_of[P] * T::kXBytes + U * T::kUnitTokens * Blocks * kBlockK;
    const uint64_t x_desc =
        Blocks == 2 ? ptx::smem_descriptor_k_major_sw128(x) : ptx::smem_descriptor_k_major_sw64(x);
    // One fence per unit: its fragments and accumulators were last written before it, and chained
    // wgmmas of one shape on the same accumulators are ordered without one (PTX ISA, wgmma.fence).
#pragma unroll
    for (int i = 0; i < 8 * Blocks; ++i) ptx::fence_register(fragments[P][i]);
#pragma unroll
    for (int i = 0; i < kUnitAcc; ++i) ptx::fence_register(sums[S][i]);
    ptx::wgmma_fence();
#pragma unroll
    for (int b = 0; b < Blocks; ++b) {  // a run-time bound here makes ptxas serialize the wgmmas (C7520)
      const uint64_t desc = x_desc + b * (kBlockK >> 4);  // block b: 64 bytes into the 128-byte row
#pragma unroll
      for (int step = 0; step < 2; ++step) {  // two k32 wgmmas per 64-wide block
        wgmma_issue<T::kUnitTokens>(&fragments[P][b * 8 + step * 4], desc + 2 * step, sums[S], b > 0 || step > 0,
                                    std::make_index_sequence<kUnitAcc>{});
      }
    }
    ptx::wgmma_commit();
  };
  // Promotes a finished unit (accumulator set S, scales of fragment set P) into the result.
  auto promote = [&](auto parity, auto set, auto unit) {
    constexpr int P = decltype(parity)::value, S = decltype(set)::value, U = decltype(unit)::value;
#pragma unroll
    for (int i = 0; i < kUnitAcc; ++i) {
      ptx::fence_register(sums[S][i]);
      result[U * kUnitAcc + i] = fmaf((i % 4) < 2 ? sigma[P][0] : sigma[P][1], sums[S][i], result[U * kUnitAcc + i]);
    }
  };
  // The group's last unit has completed: its fragments are free and its stage goes back.
  auto release_group = [&](auto parity) {
    constexpr int P = decltype(parity)::value;
#pragma unroll
    for (int i = 0; i < 8 * Blocks; ++i) ptx::fence_register(fragments[P][i]);  // live until here
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(&empty[release_stage]);
    release_stage = release_stage + 1 == T::kStages ? 0 : release_stage + 1;
  };
  // All units of one group (its fragments in set P, already converted), promoting each previous
  // unit behind the running one and converting the next group once its fragment set is free.
  // `first`: no unit before this group in the current loop iteration; `last`: drain at the end.
  // ptxas tracks which commit group `wait_group 1` leaves running only in straight-line code: an
  // accumulator set read after a loop back-edge while its wgmma may be in flight serializes every
  // wgmma (C7514). So each iteration (two groups) starts and ends with no wgmma in flight.
  auto run_group = [&](auto parity, auto first, auto last, bool has_next) {
    constexpr int P = decltype(parity)::value;
    constexpr std::integral_constant<int, 1 - P> other{};
    static_for<kUnits>([&](auto unit) {
      constexpr int U = decltype(unit)::value;
      constexpr std::integral_constant<int, (P * kUnits + U) % 2> set{};
      constexpr std::integral_constant<int, 1 - (P * kUnits + U) % 2> previous_set{};
      issue_unit(parity, set, unit);
      // With one unit per group the previous group is still running here: convert after the wait.
      if (U == kUnits - 1 && kUnits > 1 && has_next) load_group(other);
      ptx::wgmma_wait<1>();
      if constexpr (U > 0) {
        promote(parity, previous_set, std::integral_constant<int, U - 1>{});
      } else if constexpr (!decltype(first)::value) {
        promote(other, previous_set, std::integral_constant<int, kUnits - 1>{});
        release_group(other);
      }
      if (kUnits == 1 && has_next) load_group(other);
    });
    if constexpr (decltype(last)::value) {
      ptx::wgmma_wait<0>();
      promote(parity, std::integral_constant<int, (P * kUnits + kUnits - 1) % 2>{},
              std::integral_constant<int, kUnits - 1>{});
      release_group(parity);
    }
  };

  for (int item = blockIdx.x; item < p.work_items; item += gridDim.x) {
    const WorkItem w = work_item<TokenTile>(p, item);
    const int tile = 2 * w.pair + consumer;
    const bool active = tile < p.n_tiles;
#pragma unroll
    for (int i = 0; i < T::kAccumulators; ++i) result[i] = 0.0f;

    constexpr std::integral_constant<int, 0> even{};
    constexpr std::integral_constant<int, 1> odd{};
    constexpr std::true_type yes{};
    constexpr std::false_type no{};
    load_group(even);
    int group = w.group_begin;
    for (; group + 1 < w.group_end; group += 2) {
      run_group(even, yes, no, true);
      run_group(odd, no, yes, group + 2 < w.group_end);
    }
    if (group < w.group_end) run_group(even, yes, yes, false);

    // No divergent `continue` back into the wgmma loop (C7520): inactive warpgroups fall through.
    if (!T::kSplitK || p.splits == 1) {
      if (active) store_tile<TokenTile>(p, result, tile, w.token0, warp, lane);
    } else if constexpr (T::kSplitK) {
      float handed[T::kAccumulators];  // handed over through local memory, see splitk_fixup
#pragma unroll
      for (int i = 0; i < T::kAccumulators; ++i) handed[i] = result[i];
      if (active) splitk_fixup<TokenTile>(p, handed, tile, w.token0, consumer, thread_in_group);
    }
  }
}

template <int TokenTile, int Blocks>
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
    ptx::setmaxnreg_dec<24>();
    if (thread_in_group == 0) produce<TokenTile, Blocks>(x_map, p, smem, full, empty);
  } else {
    ptx::setmaxnreg_inc<240>();  // 128 x 24 + 256 x 240 = the 384 x 168 registers of the launch
    consume<TokenTile, Blocks>(p, smem, full, empty, warpgroup - 1, thread_in_group);
  }
}

}  // namespace fireq::gemm
