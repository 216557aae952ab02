// Causal prefill attention of FP8 queries over the paged INT4 KV cache, FlashAttention-3 style on
// Hopper (sm_90a), with PRounding::fp8_tile numerics (docs/kernels/ATTENTION.md §2).
//
// CTA = 128 query tokens of one query head, three warpgroups:
//  - producer: copies each 128-key tile's INT4 K rows and V^T channel rows from the pages into raw
//    shared-memory stages (cp.async, two tiles ahead), converts them to FP8 e4m3 (exact:
//    integers -8..7 are e4m3 values) straight into the 128-byte-swizzled K-major layout wgmma reads,
//    plus the tile's K and V scales as floats; kStages stages, mbarriers full/empty;
//  - two consumers, 64 query rows each:  S = Q K^T (wgmma, both operands in shared memory), online
//    softmax in the log2 domain with the K scale folded into S's columns, P~ = exp2(S - m) scaled by
//    v_scale / max_tile(v_scale) * 448 and rounded to e4m3 in registers, O += P V (wgmma, P from
//    registers, V^T from shared memory), FP32 accumulators.
// Three-stage pipelining inside a consumer (FireQ, PrefillPipeline::three_stage): Q K_i^T and
// P_{i-1} V_{i-1} are issued together; the softmax of S_i runs as soon as Q K_i^T lands, while
// P_{i-1} V_{i-1} still executes. PrefillPipeline::serial (QK, wait, softmax, PV, wait) is the baseline.
//
// Key order: P leaves S's accumulators as wgmma's register A operand without shuffles because the
// producer stores the V^T columns of every 32-key k-step in the order those registers hold the keys
// (the V conversion in produce()); the dot product over keys does not care about their order.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cute/arch/mma_sm90_gmma.hpp>
#include <utility>

#include "../gemm/ptx_sm90.cuh"
#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/attention.h"

namespace fireq::attention {
namespace {

namespace ptx = fireq::gemm::ptx;
using cute::SM90::GMMA::ScaleOut;

constexpr int kConsumerRows = 64;             // query rows per consumer warpgroup (wgmma M)
constexpr int kQueryTile = 2 * kConsumerRows;  // query tokens per CTA
constexpr int kKvTile = 128;                   // keys per stage: the reference's fp8_tile tile
constexpr int kStages = 3;                     // tile i's K and tile i-1's V are in use together
constexpr int kRawStages = 3;                  // INT4 tiles in flight to the producer
constexpr int kRawAhead = kRawStages - 1;      // copies issued this many tiles before their conversion
constexpr int kThreads = 3 * 128;
constexpr int kProducerRegisters = 56;
constexpr int kConsumerRegisters = 224;  // 56 * 128 + 224 * 256 = 168 * 384: the launch's share
constexpr float kLog2e = 1.4426950408889634f;
// Named barriers: 1 + consumer (a consumer's Q staging), 3 (producer), kTurnBarrier + consumer (ping-pong).
constexpr int kTurnBarrier = 4;

struct Params {
  const uint8_t* q;
  const uint16_t* q_scale;
  const int32_t* query_start;
  const int32_t* block_table;
  const int32_t* seq_lens;
  const uint8_t* k;
  const uint8_t* v;
  const uint16_t* k_scale;
  const uint16_t* v_scale;
  int kv_heads;
  int max_pages_per_seq;
  int page_shift;  // log2(page_size)
  int q_heads, group;
  float score_factor;  // softmax_scale * log2(e)
  uint16_t* out;
};

template <int kHeadDim>
struct RawTile {  // one tile as it sits in the pages (zeros past the CTA's range)
  uint8_t k[kKvTile][kHeadDim / 2];
  uint8_t v[kHeadDim][kKvTile / 2];
  uint16_t k_scale[kKvTile], v_scale[kKvTile];
};

template <int kHeadDim>
struct alignas(1024) Smem {
  uint8_t q[2][kConsumerRows * kHeadDim];     // FP8, K-major, swizzled (64- or 128-byte rows)
  uint8_t k[kStages][kKvTile * kHeadDim];     // FP8 K rows, idem
  uint8_t vt[kStages][kHeadDim * kKvTile];    // FP8 V^T rows (128 keys = 128 bytes), 128-byte swizzle
  float k_scale[kStages][kKvTile];
  float v_scale[kStages][kKvTile];            // 0 for keys past the CTA's range
  float v_scale_max[kStages][4];              // per producer warp: max of its 32 keys' v_scale
  RawTile<kHeadDim> raw[kRawStages];
  uint64_t full[kStages], empty[kStages];
};

// Byte offset of (row, byte) in a K-major tile of kRowBytes-byte rows with the matching wgmma
// swizzle (16-byte chunks XORed with the row's position in its 1024- or 512-byte repeat).
template <int kRowBytes>
__device__ __forceinline__ int swizzled(int row, int byte) {
  static_assert(kRowBytes == 64 || kRowBytes == 128, "64- or 128-byte swizzle");
  const int linear = row * kRowBytes + byte;
  return linear ^ (((linear >> 7) & (kRowBytes / 16 - 1)) << 4);
}

// wgmma shared-memory descriptor of such a tile (1024-byte aligned): 8-row groups 8 * kRowBytes
// apart; the leading offset is unused with swizzling.
template <int kRowBytes>
__device__ __forceinline__ uint64_t k_major_descriptor(const void* tile) {
  uint64_t desc = (ptx::smem_address(tile) & 0x3FFFF) >> 4;
  desc |= uint64_t{1} << 16;
  desc |= uint64_t{8 * kRowBytes >> 4} << 32;
  desc |= uint64_t{kRowBytes == 128 ? 1 : 2} << 62;
  return desc;
}

// Four two's-complement INT4 values (the nibbles of the low 16 bits, first value lowest) -> four
// e4m3 bytes in the same order. Byte-permute lookups in the tables of 0..7 and -8..-1, then a third
// permute takes each byte from the table its nibble's sign bit names.
__device__ __forceinline__ uint32_t int4x4_to_e4m3x4(uint32_t nibbles) {
  constexpr uint32_t kCodes0To3 = 0x44403800u, kCodes4To7 = 0x4E4C4A48u;        // e4m3(0) .. e4m3(7)
  constexpr uint32_t kCodesM8ToM5 = 0xCACCCED0u, kCodesM4ToM1 = 0xB8C0C4C8u;    // e4m3(-8) .. e4m3(-1)
  const uint32_t low_bits = nibbles & 0x7777u;
  const uint32_t non_negative = __byte_perm(kCodes0To3, kCodes4To7, low_bits);
  const uint32_t negative = __byte_perm(kCodesM8ToM5, kCodesM4ToM1, low_bits);
  const uint32_t from_negative = (nibbles >> 1) & 0x4444u;  // selector bit 2 = the nibble's bit 3
  return __byte_perm(non_negative, negative, 0x3210u | from_negative);
}

// Two floats -> two e4m3 bytes (RNE, saturating: numerics.h's fp8_e4m3_from_float), `low` first.
__device__ __forceinline__ uint32_t e4m3x2(float low, float high) {
  uint16_t packed;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(packed) : "f"(high), "f"(low));
  return packed;
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) { return __uint_as_float(uint32_t{bits} << 16); }

__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// 2^x in one MUFU.EX2 (flushes results below 2^-126 to 0: far below what an e4m3 P can hold).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------
// wgmma wrappers: S (N = 128 keys, both operands in shared memory) and O (N = head_dim, A = P in
// registers).
template <size_t... I>
__device__ __forceinline__ void wgmma_qk(uint64_t desc_q, uint64_t desc_k, float (&s)[64], bool accumulate,
                                         std::index_sequence<I...>) {
  cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>::fma(desc_q, desc_k, s[I]...,
                                                           accumulate ? ScaleOut::One : ScaleOut::Zero);
}

template <int kHeadDim>
struct PvMma;
template <>
struct PvMma<128> {
  using Op = cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_RS_TN<>;
};
template <>
struct PvMma<64> {
  using Op = cute::SM90::GMMA::MMA_64x64x32_F32E4M3E4M3_RS_TN<>;
};

template <int kHeadDim, size_t... I>
__device__ __forceinline__ void wgmma_pv(const uint32_t (&p)[4], uint64_t desc_vt, float (&o)[kHeadDim / 2],
                                         std::index_sequence<I...>) {
  PvMma<kHeadDim>::Op::fma(p[0], p[1], p[2], p[3], desc_vt, o[I]..., ScaleOut::One);
}

// ---------------------------------------------------------------------------------------------
// The CTA's work: which queries, which keys.
struct CtaRange {
  int q_begin, q_len, first_pos;  // first_pos: position of the sequence's first query
  int q_tile;                     // this CTA's 128 queries: q_tile * 128 ...
  int kv_end;                     // keys [0, kv_end) are visible to some query of the CTA
  int tiles;
  int head, kv_head, batch;
};

__device__ __forceinline__ CtaRange cta_range(const Params& p) {
  CtaRange r;
  r.q_tile = gridDim.x - 1 - blockIdx.x;  // longest causal ranges first
  r.head = blockIdx.y;
  r.batch = blockIdx.z;
  r.kv_head = r.head / p.group;
  r.q_begin = p.query_start[r.batch];
  r.q_len = p.query_start[r.batch + 1] - r.q_begin;
  r.first_pos = p.seq_lens[r.batch] - r.q_len;
  r.kv_end = r.first_pos + min(r.q_len, (r.q_tile + 1) * kQueryTile);
  r.tiles = (r.kv_end + kKvTile - 1) / kKvTile;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Producer warpgroup: INT4 pages -> raw tiles in shared memory (cp.async, kRawAhead tiles ahead of
// the conversion, so that memory latency overlaps it) -> FP8 tiles in the wgmma layout.
template <int kHeadDim>
struct ProducerPieces {
  static constexpr int kK = kKvTile * kHeadDim / 32 / 128;    // 16-byte pieces (32 channels of a key) per thread
  static constexpr int kV = kHeadDim * (kKvTile / 16) / 128;  // 8-byte pieces (16 keys of a channel) per thread
  __device__ static int k_key(int thread, int i) { return (thread + 128 * i) / (kHeadDim / 32); }
  __device__ static int k_part(int thread, int i) { return (thread + 128 * i) % (kHeadDim / 32); }
  // A thread's V pieces share one 16-key chunk (the same page), channels 128 / 8 apart.
  __device__ static int v_chunk(int thread) { return thread % (kKvTile / 16); }
  __device__ static int v_channel(int thread, int i) { return thread / (kKvTile / 16) + (128 / (kKvTile / 16)) * i; }
};

template <int kBytes>
__device__ __forceinline__ void copy_async(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = ptx::smem_address(smem);
  const int src_bytes = valid ? kBytes : 0;  // 0: zero-fill (keys past the CTA's range)
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(dst), "l"(gmem), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
}

// The pages of a thread's pieces of one tile (K rows, its V^T chunk, its scale pair). Fetched one
// tile before the copies that use them: a block-table load in front of every cp.async would put one
// memory round trip per piece on the producer's path.
template <int kHeadDim>
struct TilePages {
  int k[ProducerPieces<kHeadDim>::kK];
  int v, scale;
};

template <int kHeadDim>
__device__ __forceinline__ TilePages<kHeadDim> fetch_pages(const Params& p, const CtaRange& r, int tile, int thread) {
  using Pieces = ProducerPieces<kHeadDim>;
  const int32_t* pages = p.block_table + int64_t(r.batch) * p.max_pages_per_seq;
  // Clamped into the range: every load is valid, so all are issued together without branches.
  auto page_of = [&](int pos) { return __ldg(pages + (min(pos, r.kv_end - 1) >> p.page_shift)); };
  const int tile_start = tile * kKvTile;
  TilePages<kHeadDim> t;
  #pragma unroll
  for (int i = 0; i < Pieces::kK; ++i) t.k[i] = page_of(tile_start + Pieces::k_key(thread, i));
  t.v = page_of(tile_start + 16 * Pieces::v_chunk(thread));
  t.scale = page_of(tile_start + 2 * (thread % 64));
  return t;
}

// Copies tile `tile`'s INT4 K rows, V^T chunks and BF16 scales into raw stage `raw`.
template <int kHeadDim>
__device__ __forceinline__ void copy_raw_tile(const Params& p, const CtaRange& r, const TilePages<kHeadDim>& pages,
                                              RawTile<kHeadDim>& raw, int tile, int thread) {
  using Pieces = ProducerPieces<kHeadDim>;
  const int page_mask = (1 << p.page_shift) - 1;
  // (page * kv_heads + kv_head) * page_size + slot: the row of a cached position in the K data / scales.
  auto row_of = [&](int page, int pos) {
    return ((int64_t(page) * p.kv_heads + r.kv_head) << p.page_shift) + (pos & page_mask);
  };
  const int tile_start = tile * kKvTile;
  #pragma unroll
  for (int i = 0; i < Pieces::kK; ++i) {
    const int key = Pieces::k_key(thread, i), part = Pieces::k_part(thread, i), pos = tile_start + key;
    const bool valid = pos < r.kv_end;
    copy_async<16>(&raw.k[key][16 * part], valid ? p.k + row_of(pages.k[i], pos) * (kHeadDim / 2) + 16 * part : p.k,
                   valid);
  }
  const int chunk = Pieces::v_chunk(thread), chunk_pos = tile_start + 16 * chunk;
  const bool chunk_valid = chunk_pos < r.kv_end;  // keys past kv_end inside it: P is 0 there, codes finite
  const int64_t chunk_row = chunk_valid ? row_of(pages.v, chunk_pos) : 0;
  // V^T byte of (row, channel): ((page * kv_heads + h) * d + channel) * page_size / 2 + slot / 2.
  const uint8_t* v_chunk =
      p.v + ((((chunk_row >> p.page_shift) * kHeadDim) << p.page_shift) >> 1) + ((chunk_row & page_mask) >> 1);
  #pragma unroll
  for (int i = 0; i < Pieces::kV; ++i) {
    const int channel = Pieces::v_channel(thread, i);
    copy_async<8>(&raw.v[channel][8 * chunk], chunk_valid ? v_chunk + ((int64_t(channel) << p.page_shift) >> 1) : p.v,
                  chunk_valid);
  }
  // Scales of keys 2j, 2j + 1 (one 4-byte piece: same 16-key chunk, even slot): K by threads 0..63, V by 64..127.
  const int pair = thread % 64, pos = tile_start + 2 * pair;
  const bool valid = pos < r.kv_end, is_k = thread < 64;
  const uint16_t* scales = is_k ? p.k_scale : p.v_scale;
  copy_async<4>((is_k ? raw.k_scale : raw.v_scale) + 2 * pair, valid ? scales + row_of(pages.scale, pos) : scales,
                valid);
}

template <int kHeadDim>
__device__ void produce(const Params& p, const CtaRange& r, Smem<kHeadDim>& sm, int thread) {
  using Pieces = ProducerPieces<kHeadDim>;
  TilePages<kHeadDim> next_pages = fetch_pages<kHeadDim>(p, r, 0, thread);
  for (int tile = 0; tile < kRawAhead; ++tile) {
    if (tile < r.tiles) {
      copy_raw_tile<kHeadDim>(p, r, next_pages, sm.raw[tile], tile, thread);
      next_pages = fetch_pages<kHeadDim>(p, r, tile + 1, thread);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  for (int tile = 0; tile < r.tiles; ++tile) {
    const int stage = tile % kStages;
    RawTile<kHeadDim>& raw = sm.raw[tile % kRawStages];
    asm volatile("cp.async.wait_group %0;" ::"n"(kRawAhead - 1) : "memory");
    ptx::named_barrier_sync(3, 128);  // every producer thread's copies of this tile have landed; the
                                      // raw stage of tile - 1 has been read by all of them
    if (tile + kRawAhead < r.tiles) {
      copy_raw_tile<kHeadDim>(p, r, next_pages, sm.raw[(tile + kRawAhead) % kRawStages], tile + kRawAhead, thread);
      next_pages = fetch_pages<kHeadDim>(p, r, tile + kRawAhead + 1, thread);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");

    ptx::mbarrier_wait(&sm.empty[stage], ((tile / kStages) & 1) ^ 1);
    #pragma unroll
    for (int i = 0; i < Pieces::kK; ++i) {
      const int key = Pieces::k_key(thread, i), part = Pieces::k_part(thread, i);
      const uint4 w = *reinterpret_cast<const uint4*>(&raw.k[key][16 * part]);
      uint8_t* tile_k = sm.k[stage];
      *reinterpret_cast<uint4*>(tile_k + swizzled<kHeadDim>(key, 32 * part)) =
          make_uint4(int4x4_to_e4m3x4(w.x), int4x4_to_e4m3x4(w.x >> 16), int4x4_to_e4m3x4(w.y),
                     int4x4_to_e4m3x4(w.y >> 16));
      *reinterpret_cast<uint4*>(tile_k + swizzled<kHeadDim>(key, 32 * part + 16)) =
          make_uint4(int4x4_to_e4m3x4(w.z), int4x4_to_e4m3x4(w.z >> 16), int4x4_to_e4m3x4(w.w),
                     int4x4_to_e4m3x4(w.w >> 16));
    }
    const int chunk = Pieces::v_chunk(thread);
    #pragma unroll
    for (int i = 0; i < Pieces::kV; ++i) {
      const int channel = Pieces::v_channel(thread, i);
      const uint2 w = *reinterpret_cast<const uint2*>(&raw.v[channel][8 * chunk]);
      const uint32_t a_lo = int4x4_to_e4m3x4(w.x), a_hi = int4x4_to_e4m3x4(w.x >> 16);  // keys 0..7
      const uint32_t b_lo = int4x4_to_e4m3x4(w.y), b_hi = int4x4_to_e4m3x4(w.y >> 16);  // keys 8..15
      // Pairs of keys alternate between the chunk's two halves: the order pack_p() holds them in.
      const uint4 out = make_uint4(__byte_perm(a_lo, b_lo, 0x5410), __byte_perm(a_lo, b_lo, 0x7632),
                                   __byte_perm(a_hi, b_hi, 0x5410), __byte_perm(a_hi, b_hi, 0x7632));
      *reinterpret_cast<uint4*>(sm.vt[stage] + swizzled<128>(channel, 16 * chunk)) = out;
    }
    // A pair's second key may lie past kv_end with a stale scale (NaN, say): 0 keeps 0 * scale finite.
    const bool key_valid = tile * kKvTile + thread < r.kv_end;
    const float v_scale = key_valid ? bf16_bits_to_float(raw.v_scale[thread]) : 0.0f;
    sm.k_scale[stage][thread] = key_valid ? bf16_bits_to_float(raw.k_scale[thread]) : 0.0f;
    sm.v_scale[stage][thread] = v_scale;
    // Scales are >= 0, so their bit patterns order like the floats: one warp-wide integer max.
    const uint32_t warp_v_max = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(v_scale));
    if (thread % 32 == 0) sm.v_scale_max[stage][thread / 32] = __uint_as_float(warp_v_max);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // generic stores -> wgmma reads
    ptx::mbarrier_arrive(&sm.full[stage]);
  }
}

// ---------------------------------------------------------------------------------------------
// Consumer warpgroup state and steps.
template <int kHeadDim>
struct Consumer {
  static constexpr int kOAcc = kHeadDim / 2;
  const Params& p;
  const CtaRange& r;
  Smem<kHeadDim>& sm;
  int warp, g, t;
  int row_pos[2];        // positions of rows g and g + 8 of this warp
  float row_factor[2];   // q_scale * softmax_scale * log2(e); 0 for rows past q_len
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this thread's partial sums of P~
  float o_unit[2] = {1.0f, 1.0f};    // O = o_unit * o_acc: the last tile's max(v_scale) / 448
  int wg_first_pos;

  // Online softmax of S (tile `tile`, stage `stage`), in place: S becomes P~ * v_scale * 448 /
  // max(v_scale) in FP32, still in the accumulator layout; `rescale` gets the factor that brings
  // o_acc to the units of this tile. Touches only S and row statistics, so it can run while a P V
  // wgmma reads the previous P fragments. Element i of S is row half (i / 2) % 2 (rows g, g + 8),
  // key 8 (i / 4) + 2t + i % 2: a thread's two keys of an n8 block are one float2 of the scales.
  __device__ __forceinline__ void softmax(float (&s)[64], int tile, int stage, float (&rescale)[2]) {
    const int tile_start = tile * kKvTile;
    // Below the diagonal of every row of the warpgroup and inside the range: no masks, and every
    // row's max(v_scale) is the whole tile's (most tiles).
    if (tile_start + kKvTile <= min(r.kv_end, wg_first_pos + 1)) {
      softmax_tile<false>(s, tile_start, stage, rescale);
    } else {
      softmax_tile<true>(s, tile_start, stage, rescale);
    }
  }

  template <bool kMasked>
  __device__ __forceinline__ void softmax_tile(float (&s)[64], int tile_start, int stage, float (&rescale)[2]) {
    const float2* k_scale = reinterpret_cast<const float2*>(sm.k_scale[stage]) + t;  // keys 2t, 2t + 1
    const float2* v_scale = reinterpret_cast<const float2*>(sm.v_scale[stage]) + t;
    float vmax[2] = {0.0f, 0.0f}, tile_max[2] = {-INFINITY, -INFINITY};
    // S * k_scale (x, the row factor still out) and the row maxima; masked keys -inf.
    #pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float2 ks = k_scale[4 * j];
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 4 * j + e, rh = e / 2;
        float x = s[i] * (e % 2 ? ks.y : ks.x);
        if constexpr (kMasked) {
          const int key_pos = tile_start + 8 * j + 2 * t + e % 2;
          const bool visible = key_pos < r.kv_end && key_pos <= row_pos[rh];
          x = visible ? x : -INFINITY;
          const float2 vs = v_scale[4 * j];
          if (visible) vmax[rh] = fmaxf(vmax[rh], e % 2 ? vs.y : vs.x);
        }
        s[i] = x;
        tile_max[rh] = fmaxf(tile_max[rh], x);
      }
    }
    if constexpr (!kMasked) {
      const float4 warp_max = *reinterpret_cast<const float4*>(sm.v_scale_max[stage]);
      vmax[0] = vmax[1] = fmaxf(fmaxf(warp_max.x, warp_max.y), fmaxf(warp_max.z, warp_max.w));
    }
    float neg_base[2], to_fp8[2];
    #pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      #pragma unroll
      for (int lane_bit = 1; lane_bit <= 2; lane_bit <<= 1) {
        tile_max[rh] = fmaxf(tile_max[rh], __shfl_xor_sync(0xFFFFFFFFu, tile_max[rh], lane_bit));
        if constexpr (kMasked) vmax[rh] = fmaxf(vmax[rh], __shfl_xor_sync(0xFFFFFFFFu, vmax[rh], lane_bit));
      }
      // The row factor is >= 0 (0 for rows past q_len): max(x * f) = max(x) * f.
      const float scaled_max = tile_max[rh] == -INFINITY ? -INFINITY : tile_max[rh] * row_factor[rh];
      const float new_max = fmaxf(row_max[rh], scaled_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float alpha = fast_exp2(row_max[rh] - base);
      row_max[rh] = new_max;
      row_sum[rh] *= alpha;
      neg_base[rh] = -base;
      // A row that sees no key of this tile keeps its units (its P is all zero).
      const float unit = vmax[rh] > 0.0f ? vmax[rh] / kFp8E4M3Max : o_unit[rh];
      to_fp8[rh] = vmax[rh] > 0.0f ? kFp8E4M3Max / vmax[rh] : 0.0f;
      rescale[rh] = alpha * (o_unit[rh] / unit);
      o_unit[rh] = unit;
    }
    // P~ = exp2(x * f - max), summed unscaled; then times v_scale * 448 / max(v_scale), the factor
    // per key (interior tiles: the same for both row halves).
    #pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float2 vs = v_scale[4 * j];
      const float2 key_factor = make_float2(vs.x * to_fp8[0], vs.y * to_fp8[0]);
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 4 * j + e, rh = e / 2;
        float prob;
        if constexpr (kMasked) {  // masked x is -inf, and f may be 0: exp2 of -inf, never of NaN
          prob = s[i] == -INFINITY ? 0.0f : fast_exp2(fmaf(s[i], row_factor[rh], neg_base[rh]));
          s[i] = (prob * (e % 2 ? vs.y : vs.x)) * to_fp8[rh];
        } else {
          prob = fast_exp2(fmaf(s[i], row_factor[rh], neg_base[rh]));
          s[i] = prob * (e % 2 ? key_factor.y : key_factor.x);
        }
        row_sum[rh] += prob;
      }
    }
  }

  // The scaled P (softmax's output in S's registers) to e4m3 A fragments. k-step ks: a0 = row g, keys
  // of n8 blocks 4ks and 4ks+1; a1 = row g + 8; a2, a3: blocks 4ks+2, 4ks+3.
  __device__ __forceinline__ static void pack_p(const float (&s)[64], uint32_t (&pf)[4][4]) {
    #pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      #pragma unroll
      for (int reg = 0; reg < 4; ++reg) {
        const int i0 = 16 * ks + 8 * (reg / 2) + 2 * (reg % 2);  // block 4ks + 2(reg/2), row half reg%2
        pf[ks][reg] = e4m3x2(s[i0], s[i0 + 1]) | (e4m3x2(s[i0 + 4], s[i0 + 5]) << 16);
      }
  }

  // The wgmmas of a step. Every register they read or write is fenced before the first of them and
  // nothing but wgmmas comes between (else ptxas serializes them, C7513).
  __device__ __forceinline__ void fence_s(float (&s)[64]) {
    #pragma unroll
    for (int i = 0; i < 64; ++i) ptx::fence_register(s[i]);
  }
  __device__ __forceinline__ void fence_o(float (&o)[kOAcc], uint32_t (&pf)[4][4]) {
    #pragma unroll
    for (int i = 0; i < kOAcc; ++i) ptx::fence_register(o[i]);
    #pragma unroll
    for (int i = 0; i < 16; ++i) ptx::fence_register(pf[i / 4][i % 4]);
  }
  __device__ __forceinline__ void wgmmas_qk(uint64_t desc_q, uint64_t desc_k, float (&s)[64]) {
    #pragma unroll
    for (int ks = 0; ks < kHeadDim / 32; ++ks)
      wgmma_qk(desc_q + 2 * ks, desc_k + 2 * ks, s, ks > 0, std::make_index_sequence<64>{});
    ptx::wgmma_commit();
  }
  __device__ __forceinline__ void wgmmas_pv(uint64_t desc_vt, const uint32_t (&pf)[4][4], float (&o)[kOAcc]) {
    #pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_pv<kHeadDim>(pf[ks], desc_vt + 2 * ks, o, std::make_index_sequence<kOAcc>{});
    ptx::wgmma_commit();
  }
  __device__ __forceinline__ uint64_t k_descriptor(int stage) { return k_major_descriptor<kHeadDim>(sm.k[stage]); }
  __device__ __forceinline__ uint64_t vt_descriptor(int stage) { return k_major_descriptor<128>(sm.vt[stage]); }

  __device__ __forceinline__ void release(int stage, int lane) {
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(&sm.empty[stage]);
  }
};

template <int kHeadDim>
__device__ __forceinline__ void rescale_o(float (&o)[kHeadDim / 2], const float (&rescale)[2]) {
  #pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) {
    ptx::fence_register(o[i]);
    o[i] *= rescale[(i / 2) % 2];
  }
}

// FlashAttention-3's ping-pong: the two consumer warpgroups take turns issuing their wgmmas (named
// barriers kTurnBarrier + consumer, 256 threads: one warpgroup syncs, the other arrives), so that one
// warpgroup's softmax runs while the other's GEMMs hold the tensor cores. Consumer 0 goes first; both
// have the same number of issue phases, and the last pass of consumer 1 is left out so that no
// arrival is pending at exit.
struct Turns {
  int consumer, phases;
  __device__ __forceinline__ void start() const {
    if (consumer == 1) named_barrier_arrive(kTurnBarrier, 256);
  }
  __device__ __forceinline__ void wait_mine() const { ptx::named_barrier_sync(kTurnBarrier + consumer, 256); }
  __device__ __forceinline__ void pass(int phase) const {
    if (consumer == 0 || phase + 1 < phases) named_barrier_arrive(kTurnBarrier + 1 - consumer, 256);
  }
};

template <int kHeadDim, bool kThreeStage>
__device__ void consume(const Params& p, const CtaRange& r, Smem<kHeadDim>& sm, int consumer, int thread) {
  Consumer<kHeadDim> c{p, r, sm};
  const int lane = thread % 32;
  c.warp = thread / 32;
  c.g = lane / 4;
  c.t = lane % 4;
  const int wg_first_query = r.q_tile * kQueryTile + consumer * kConsumerRows;
  c.wg_first_pos = r.first_pos + wg_first_query;

  // Q rows of this warpgroup into its swizzled tile (zeros past q_len).
  uint8_t* q_tile = sm.q[consumer];
  constexpr int kQPieces = kConsumerRows * kHeadDim / 16 / 128;
  #pragma unroll
  for (int i = 0; i < kQPieces; ++i) {
    const int piece = thread + 128 * i, row = piece / (kHeadDim / 16), part = piece % (kHeadDim / 16);
    const int query = wg_first_query + row;
    const uint4 x = query < r.q_len ? *reinterpret_cast<const uint4*>(
                                          p.q + (int64_t(r.q_begin + query) * p.q_heads + r.head) * kHeadDim + 16 * part)
                                    : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(q_tile + swizzled<kHeadDim>(row, 16 * part)) = x;
  }
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int query = wg_first_query + c.warp * 16 + c.g + 8 * rh;
    c.row_pos[rh] = r.first_pos + query;
    c.row_factor[rh] =
        query < r.q_len ? bf16_bits_to_float(p.q_scale[int64_t(r.q_begin + query) * p.q_heads + r.head]) * p.score_factor
                        : 0.0f;
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  ptx::named_barrier_sync(1 + consumer, 128);
  const uint64_t desc_q = k_major_descriptor<kHeadDim>(q_tile);

  float s[64];
  float o[kHeadDim / 2];
  #pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
  uint32_t pf[4][4];
  float rescale[2];

  if constexpr (kThreeStage) {
    // r.tiles + 1 issue phases: Q K_0^T, then (Q K_i^T, P_{i-1} V_{i-1}) for i >= 1, then P_last V_last.
    const Turns turns{consumer, r.tiles + 1};
    turns.start();
    ptx::mbarrier_wait(&sm.full[0], 0);
    const uint64_t desc_k0 = c.k_descriptor(0);
    turns.wait_mine();
    c.fence_s(s);
    ptx::wgmma_fence();
    c.wgmmas_qk(desc_q, desc_k0, s);
    turns.pass(0);
    ptx::wgmma_wait<0>();
    #pragma unroll
    for (int i = 0; i < 64; ++i) ptx::fence_register(s[i]);
    c.softmax(s, 0, 0, rescale);  // o is zero: no rescale needed
    c.pack_p(s, pf);
    for (int tile = 1; tile < r.tiles; ++tile) {
      const int stage = tile % kStages, previous = (tile - 1) % kStages;
      ptx::mbarrier_wait(&sm.full[stage], (tile / kStages) & 1);
      const uint64_t desc_k = c.k_descriptor(stage), desc_vt = c.vt_descriptor(previous);
      turns.wait_mine();
      c.fence_s(s);
      c.fence_o(o, pf);
      ptx::wgmma_fence();
      c.wgmmas_qk(desc_q, desc_k, s);     // S_i = Q K_i^T
      c.wgmmas_pv(desc_vt, pf, o);        // O += P_{i-1} V_{i-1}, both in flight
      turns.pass(tile);
      ptx::wgmma_wait<1>();             // S_i landed; P_{i-1} V_{i-1} may still run
      #pragma unroll
      for (int i = 0; i < 64; ++i) ptx::fence_register(s[i]);
      c.softmax(s, tile, stage, rescale);
      ptx::wgmma_wait<0>();
      #pragma unroll
      for (int i = 0; i < 16; ++i) ptx::fence_register(pf[i / 4][i % 4]);  // read by the wgmma until here
      c.release(previous, lane);
      rescale_o<kHeadDim>(o, rescale);
      c.pack_p(s, pf);  // after the wait: P's registers are the in-flight wgmma's operand (C7513)
    }
    const int last = (r.tiles - 1) % kStages;
    const uint64_t desc_vt = c.vt_descriptor(last);
    turns.wait_mine();
    c.fence_o(o, pf);
    ptx::wgmma_fence();
    c.wgmmas_pv(desc_vt, pf, o);
    turns.pass(r.tiles);
    ptx::wgmma_wait<0>();
    #pragma unroll
    for (int i = 0; i < 16; ++i) ptx::fence_register(pf[i / 4][i % 4]);
    c.release(last, lane);
  } else {
    for (int tile = 0; tile < r.tiles; ++tile) {
      const int stage = tile % kStages;
      ptx::mbarrier_wait(&sm.full[stage], (tile / kStages) & 1);
      const uint64_t desc_k = c.k_descriptor(stage), desc_vt = c.vt_descriptor(stage);
      c.fence_s(s);
      ptx::wgmma_fence();
      c.wgmmas_qk(desc_q, desc_k, s);
      ptx::wgmma_wait<0>();
      #pragma unroll
      for (int i = 0; i < 64; ++i) ptx::fence_register(s[i]);
      c.softmax(s, tile, stage, rescale);
      c.pack_p(s, pf);
      rescale_o<kHeadDim>(o, rescale);
      c.fence_o(o, pf);
      ptx::wgmma_fence();
      c.wgmmas_pv(desc_vt, pf, o);
      ptx::wgmma_wait<0>();
      #pragma unroll
      for (int i = 0; i < 16; ++i) ptx::fence_register(pf[i / 4][i % 4]);
      c.release(stage, lane);
    }
  }
  #pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) ptx::fence_register(o[i]);

  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float sum = c.row_sum[rh];
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
    const int query = wg_first_query + c.warp * 16 + c.g + 8 * rh;
    if (query >= r.q_len) continue;
    uint16_t* out = p.out + (int64_t(r.q_begin + query) * p.q_heads + r.head) * kHeadDim;
    const float factor = c.o_unit[rh] / sum;
    #pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      const uint32_t pair = uint32_t(bf16_from_float(o[4 * j + 2 * rh] * factor)) |
                            (uint32_t(bf16_from_float(o[4 * j + 2 * rh + 1] * factor)) << 16);
      *reinterpret_cast<uint32_t*>(out + 8 * j + 2 * c.t) = pair;
    }
  }
}

template <int kHeadDim, bool kThreeStage>
__global__ void __launch_bounds__(kThreads, 1) prefill_sm90_kernel(const __grid_constant__ Params p) {
  extern __shared__ uint8_t smem_raw[];
  // Aligned by pointer arithmetic on smem_raw itself: through an integer cast the compiler loses the
  // shared state space and every access becomes a generic LD/ST.
  const uint32_t misalignment = ptx::smem_address(smem_raw) & 1023;
  Smem<kHeadDim>& sm = *reinterpret_cast<Smem<kHeadDim>*>(smem_raw + ((1024 - misalignment) & 1023));
  const CtaRange r = cta_range(p);
  if (r.q_tile * kQueryTile >= r.q_len) return;  // the whole CTA: shorter sequence of the batch
  const int warpgroup = threadIdx.x / 128, thread = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(&sm.full[s], 128);  // every producer thread
      ptx::mbarrier_init(&sm.empty[s], 8);   // one lane per consumer warp
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();
  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<kProducerRegisters>();
    produce<kHeadDim>(p, r, sm, thread);
  } else {
    ptx::setmaxnreg_inc<kConsumerRegisters>();
    consume<kHeadDim, kThreeStage>(p, r, sm, warpgroup - 1, thread);
  }
}

template <int kHeadDim, bool kThreeStage>
void launch(dim3 grid, const Params& p, cudaStream_t stream) {
  constexpr int kSmemBytes = static_cast<int>(sizeof(Smem<kHeadDim>)) + 1024;  // + alignment slack
  auto* kernel = prefill_sm90_kernel<kHeadDim, kThreeStage>;
  FIREQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(p);
}

}  // namespace

void paged_attention_prefill_fp8(const PagedAttentionArgs& args, void* stream, PrefillPipeline pipeline) {
  check_shapes(args);
  const PagedKvLayout& layout = args.cache.layout;
  if (args.q_heads > 65535 || args.sequences.batch > 65535)
    fail("paged_attention_prefill_fp8: q_heads ", args.q_heads, " and batch ", args.sequences.batch,
         " must be <= 65535");
  Params p{};
  p.q = args.q;
  p.q_scale = args.q_scale;
  p.query_start = args.query_start;
  p.block_table = args.sequences.block_table;
  p.seq_lens = args.sequences.seq_lens;
  p.k = args.cache.k;
  p.v = args.cache.v;
  p.k_scale = args.cache.k_scale;
  p.v_scale = args.cache.v_scale;
  p.kv_heads = layout.kv_heads;
  p.max_pages_per_seq = args.sequences.max_pages_per_seq;
  p.page_shift = __builtin_ctz(static_cast<unsigned>(layout.page_size));  // a power of two (check_layout)
  p.q_heads = args.q_heads;
  p.group = args.q_heads / layout.kv_heads;
  p.score_factor = args.softmax_scale * kLog2e;
  p.out = args.out;
  const dim3 grid((args.max_query_len + kQueryTile - 1) / kQueryTile, args.q_heads, args.sequences.batch);
  const auto s = static_cast<cudaStream_t>(stream);
  const bool three_stage = pipeline == PrefillPipeline::three_stage;
  if (layout.head_dim == 128) {
    three_stage ? launch<128, true>(grid, p, s) : launch<128, false>(grid, p, s);
  } else {
    three_stage ? launch<64, true>(grid, p, s) : launch<64, false>(grid, p, s);
  }
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::attention
