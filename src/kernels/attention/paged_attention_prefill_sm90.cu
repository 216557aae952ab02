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
#include "attention_common.cuh"
#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/attention.h"

namespace fireq::attention {
namespace {

namespace ptx = fireq::gemm::ptx;
using cute::SM90::GMMA::ScaleOut;
using detail::bf16_bits_to_float;
using detail::copy_async;
using detail::e4m3x2;
using Params = detail::KernelParams;

constexpr int kConsumerRows = 64;             // query rows per consumer warpgroup (wgmma M)
constexpr int kQueryTile = 2 * kConsumerRows;  // query tokens per CTA
constexpr int kKvTile = 128;                   // keys per stage: the reference's fp8_tile tile
constexpr int kStages = 3;                     // tile i's K and tile i-1's V are in use together
constexpr int kRawStages = 3;                  // INT4 tiles in flight to the producer
constexpr int kRawAhead = kRawStages - 1;      // copies issued this many tiles before their conversion
constexpr int kThreads = 3 * 128;
constexpr int kProducerRegisters = 72;
constexpr int kConsumerRegisters = 216;  // 72 * 128 + 216 * 256 = 168 * 384: the launch's share
// Named barriers: 1 + consumer (a consumer's Q staging), 3 (producer), kTurnBarrier + consumer (ping-pong),
// kEpilogueBarrier.
constexpr int kTurnBarrier = 4;
constexpr int kEpilogueBarrier = 6;  // the two consumers, in the FP8 output epilogue


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
  int fp8_tile_done;  // the FP8 output epilogue's flag: this CTA quantizes its query tile
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

// PTX prmt: bytes of {b, a} picked by the low 16 bits of `selector` (every selector here has bit 3
// of each nibble clear, so no sign replication). __byte_perm would make the compiler mask the
// selector first, and the high half's selector is already in place after one shift.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t out;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(out) : "r"(a), "r"(b), "r"(selector));
  return out;
}

// Eight two's-complement INT4 values (the nibbles of `nibbles`, first value lowest) -> eight e4m3
// bytes in the same order (.x: values 0-3, .y: values 4-7), exact. Byte-permute lookups in the
// tables of 0..7 and -8..-1, then a third permute takes each byte from the table its nibble's sign
// bit names; the masks and selectors of both halves come from one instruction each: 11 instructions
// for 8 values (ptxas adds a register copy of a table before most lookups).
__device__ __forceinline__ uint2 int4x8_to_e4m3x8(uint32_t nibbles) {
  constexpr uint32_t kCodes0To3 = 0x44403800u, kCodes4To7 = 0x4E4C4A48u;        // e4m3(0) .. e4m3(7)
  constexpr uint32_t kCodesM8ToM5 = 0xCACCCED0u, kCodesM4ToM1 = 0xB8C0C4C8u;    // e4m3(-8) .. e4m3(-1)
  const uint32_t low_bits = nibbles & 0x77777777u;
  // Selector bit 2 of each nibble = the value's sign (bit 3); 0x3210 picks bytes 0..3 in order.
  const uint32_t pick = ((nibbles >> 1) & 0x44444444u) | 0x32103210u;
  const uint32_t low_bits_hi = low_bits >> 16, pick_hi = pick >> 16;
  const uint32_t lo = prmt(prmt(kCodes0To3, kCodes4To7, low_bits), prmt(kCodesM8ToM5, kCodesM4ToM1, low_bits), pick);
  const uint32_t hi =
      prmt(prmt(kCodes0To3, kCodes4To7, low_bits_hi), prmt(kCodesM8ToM5, kCodesM4ToM1, low_bits_hi), pick_hi);
  return make_uint2(lo, hi);
}

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

// What a producer thread's copies need, in registers: the CTA's KV head in page 0 of each array and
// the distance between pages (the same for K and V data: kv_heads * page_size * d / 2 bytes).
struct CopyPlan {
  const uint8_t* k;
  const uint8_t* v;
  const uint16_t* scales;  // K scales (threads 0..63) or V scales (64..127)
  uint32_t data_page_bytes, scale_page_elements;
  int page_mask, half_page_shift;

  __device__ __forceinline__ CopyPlan(const Params& p, const CtaRange& r, int head_dim, int thread) {
    const int page_size = 1 << p.page_shift;
    k = p.k + int64_t(r.kv_head) * page_size * (head_dim / 2);
    v = p.v + int64_t(r.kv_head) * head_dim * (page_size / 2);
    scales = (thread < 64 ? p.k_scale : p.v_scale) + int64_t(r.kv_head) * page_size;
    scale_page_elements = uint32_t(p.layout.kv_heads) * page_size;
    data_page_bytes = scale_page_elements * (head_dim / 2);
    page_mask = page_size - 1;
    half_page_shift = p.page_shift - 1;
  }
};

// Copies tile `tile`'s INT4 K rows, V^T chunks and BF16 scales into raw stage `raw`. Pieces past the
// range are zero-filled; their pages are clamped ones (fetch_pages), so every address is valid.
template <int kHeadDim>
__device__ __forceinline__ void copy_raw_tile(const CopyPlan& plan, const CtaRange& r, const TilePages<kHeadDim>& pages,
                                              RawTile<kHeadDim>& raw, int tile, int thread) {
  using Pieces = ProducerPieces<kHeadDim>;
  const int tile_start = tile * kKvTile;
  #pragma unroll
  for (int i = 0; i < Pieces::kK; ++i) {
    const int key = Pieces::k_key(thread, i), part = Pieces::k_part(thread, i), pos = tile_start + key;
    const uint8_t* src = plan.k + uint64_t(uint32_t(pages.k[i])) * plan.data_page_bytes +
                         ((pos & plan.page_mask) * (kHeadDim / 2) + 16 * part);
    copy_async<16>(&raw.k[key][16 * part], src, pos < r.kv_end);
  }
  // V^T: byte (slot / 2) of channel row `channel` (page_size / 2 bytes) of the page's head block.
  const int chunk = Pieces::v_chunk(thread), chunk_pos = tile_start + 16 * chunk;
  const bool chunk_valid = chunk_pos < r.kv_end;  // keys past kv_end inside it: P is 0 there, codes finite
  const uint8_t* v_chunk =
      plan.v + uint64_t(uint32_t(pages.v)) * plan.data_page_bytes + ((chunk_pos & plan.page_mask) >> 1);
  #pragma unroll
  for (int i = 0; i < Pieces::kV; ++i) {
    const int channel = Pieces::v_channel(thread, i);
    copy_async<8>(&raw.v[channel][8 * chunk], v_chunk + (channel << plan.half_page_shift), chunk_valid);
  }
  // Scales of keys 2j, 2j + 1 (one 4-byte piece: same 16-key chunk, even slot): K by threads 0..63, V by 64..127.
  const int pair = thread % 64, pos = tile_start + 2 * pair;
  const uint16_t* src = plan.scales + uint64_t(uint32_t(pages.scale)) * plan.scale_page_elements + (pos & plan.page_mask);
  copy_async<4>((thread < 64 ? raw.k_scale : raw.v_scale) + 2 * pair, src, pos < r.kv_end);
}

template <int kHeadDim>
__device__ void produce(const Params& p, const CtaRange& r, Smem<kHeadDim>& sm, int thread) {
  using Pieces = ProducerPieces<kHeadDim>;
  const CopyPlan plan(p, r, kHeadDim, thread);
  TilePages<kHeadDim> next_pages = fetch_pages<kHeadDim>(p, r, 0, thread);
  for (int tile = 0; tile < kRawAhead; ++tile) {
    if (tile < r.tiles) {
      copy_raw_tile<kHeadDim>(plan, r, next_pages, sm.raw[tile], tile, thread);
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
      copy_raw_tile<kHeadDim>(plan, r, next_pages, sm.raw[(tile + kRawAhead) % kRawStages], tile + kRawAhead, thread);
      next_pages = fetch_pages<kHeadDim>(p, r, tile + kRawAhead + 1, thread);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");

    ptx::mbarrier_wait(&sm.empty[stage], ((tile / kStages) & 1) ^ 1);
    #pragma unroll
    for (int i = 0; i < Pieces::kK; ++i) {
      const int key = Pieces::k_key(thread, i), part = Pieces::k_part(thread, i);
      const uint4 w = *reinterpret_cast<const uint4*>(&raw.k[key][16 * part]);
      uint8_t* tile_k = sm.k[stage];
      const uint2 c0 = int4x8_to_e4m3x8(w.x), c1 = int4x8_to_e4m3x8(w.y);
      const uint2 c2 = int4x8_to_e4m3x8(w.z), c3 = int4x8_to_e4m3x8(w.w);
      *reinterpret_cast<uint4*>(tile_k + swizzled<kHeadDim>(key, 32 * part)) = make_uint4(c0.x, c0.y, c1.x, c1.y);
      *reinterpret_cast<uint4*>(tile_k + swizzled<kHeadDim>(key, 32 * part + 16)) = make_uint4(c2.x, c2.y, c3.x, c3.y);
    }
    const int chunk = Pieces::v_chunk(thread);
    #pragma unroll
    for (int i = 0; i < Pieces::kV; ++i) {
      const int channel = Pieces::v_channel(thread, i);
      const uint2 w = *reinterpret_cast<const uint2*>(&raw.v[channel][8 * chunk]);
      // Pairs of keys alternate between the chunk's two halves, the order pack_p() holds them in:
      // bytes (keys 0 1) (8 9) (2 3) (10 11) | (4 5) (12 13) (6 7) (14 15), interleaved before the lookup.
      const uint2 first = int4x8_to_e4m3x8(__byte_perm(w.x, w.y, 0x5140));
      const uint2 second = int4x8_to_e4m3x8(__byte_perm(w.x, w.y, 0x7362));
      *reinterpret_cast<uint4*>(sm.vt[stage] + swizzled<128>(channel, 16 * chunk)) =
          make_uint4(first.x, first.y, second.x, second.y);
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
    float vmax[2] = {0.0f, 0.0f};
    float max_part[2][4] = {{-INFINITY, -INFINITY, -INFINITY, -INFINITY}, {-INFINITY, -INFINITY, -INFINITY, -INFINITY}};
    // S * k_scale (x, the row factor still out) and the row maxima (4 partial maxima per row: short
    // dependency chains); masked keys -inf.
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
        max_part[rh][j % 4] = fmaxf(max_part[rh][j % 4], x);
      }
    }
    if constexpr (!kMasked) {
      const float4 warp_max = *reinterpret_cast<const float4*>(sm.v_scale_max[stage]);
      vmax[0] = vmax[1] = fmaxf(fmaxf(warp_max.x, warp_max.y), fmaxf(warp_max.z, warp_max.w));
    }
    float neg_base[2], to_fp8[2];
    #pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float tile_max = fmaxf(fmaxf(max_part[rh][0], max_part[rh][1]), fmaxf(max_part[rh][2], max_part[rh][3]));
      #pragma unroll
      for (int lane_bit = 1; lane_bit <= 2; lane_bit <<= 1) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, lane_bit));
        if constexpr (kMasked) vmax[rh] = fmaxf(vmax[rh], __shfl_xor_sync(0xFFFFFFFFu, vmax[rh], lane_bit));
      }
      // The row factor is >= 0 (0 for rows past q_len): max(x * f) = max(x) * f.
      const float scaled_max = tile_max == -INFINITY ? -INFINITY : tile_max * row_factor[rh];
      const float new_max = fmaxf(row_max[rh], scaled_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float alpha = fast_exp2(row_max[rh] - base);
      row_max[rh] = new_max;
      row_sum[rh] *= alpha;
      neg_base[rh] = -base;
      // A row that sees no key of this tile keeps its units (its P is all zero).
      // Fast division (2 ulp): these factors only set the units of P and O, and e4m3 rounds P to 4 bits.
      const float unit = vmax[rh] > 0.0f ? vmax[rh] * (1.0f / kFp8E4M3Max) : o_unit[rh];
      to_fp8[rh] = vmax[rh] > 0.0f ? __fdividef(kFp8E4M3Max, vmax[rh]) : 0.0f;
      rescale[rh] = alpha * __fdividef(o_unit[rh], unit);
      o_unit[rh] = unit;
    }
    // P~ = exp2(x * f - max), summed unscaled (2 partial sums per row); then times v_scale * 448 /
    // max(v_scale), the factor per key (interior tiles: the same for both row halves).
    float sum_part[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
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
        sum_part[rh][j % 2] += prob;
      }
    }
    row_sum[0] += sum_part[0][0] + sum_part[0][1];
    row_sum[1] += sum_part[1][0] + sum_part[1][1];
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

  int64_t token[2];
  float absmax[2] = {0.0f, 0.0f};
  #pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float sum = c.row_sum[rh];
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
    const int query = wg_first_query + c.warp * 16 + c.g + 8 * rh;
    token[rh] = query < r.q_len ? int64_t(r.q_begin + query) : -1;
    if (token[rh] < 0) continue;
    uint16_t* out = p.out + (token[rh] * p.q_heads + r.head) * kHeadDim;
    const float factor = c.o_unit[rh] / sum;
    #pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      const uint16_t lo = bf16_from_float(o[4 * j + 2 * rh] * factor), hi = bf16_from_float(o[4 * j + 2 * rh + 1] * factor);
      absmax[rh] = fmaxf(absmax[rh], fmaxf(fabsf(bf16_bits_to_float(lo)), fabsf(bf16_bits_to_float(hi))));
      *reinterpret_cast<uint32_t*>(out + 8 * j + 2 * c.t) = uint32_t{lo} | (uint32_t{hi} << 16);
    }
  }
  if (p.fp8.codes) {
    const int first_query = r.q_tile * kQueryTile;
    detail::fp8_epilogue_tile<4>(p.out, p.fp8, p.q_heads, p.q_heads * kHeadDim, token[0], token[1], absmax[0],
                                 absmax[1], int64_t(r.q_begin) + first_query, min(kQueryTile, r.q_len - first_query),
                                 consumer * 128 + thread, 256, &sm.fp8_tile_done,
                                 [] { ptx::named_barrier_sync(kEpilogueBarrier, 256); });
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
  const auto s = static_cast<cudaStream_t>(stream);
  const Params p = detail::make_kernel_params(args, s);
  const dim3 grid((args.max_query_len + kQueryTile - 1) / kQueryTile, args.q_heads, args.sequences.batch);
  const bool three_stage = pipeline == PrefillPipeline::three_stage;
  if (layout.head_dim == 128) {
    three_stage ? launch<128, true>(grid, p, s) : launch<128, false>(grid, p, s);
  } else {
    three_stage ? launch<64, true>(grid, p, s) : launch<64, false>(grid, p, s);
  }
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::attention
