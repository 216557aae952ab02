// Thin wrappers over the Hopper PTX the GEMM uses: mbarriers, bulk and tensor copies (TMA),
// wgmma fences and register-count hand-off. One instruction each; names follow the PTX.
#pragma once

#include <cuda.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fireq::gemm::ptx {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(count));
}

// Makes the barrier initialisation visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_address(bar)) : "memory");
}

__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_loop:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_loop;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}

// Shared-memory loads by 32-bit shared address: a pointer the compiler cannot prove shared (the
// dynamic buffer is realigned through an integer) would become a slower generic load.
__device__ __forceinline__ uint4 load_shared_u128(uint32_t address) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(address));
  return v;
}
__device__ __forceinline__ uint32_t load_shared_u8(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.u8 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

// 1D bulk copy global -> shared, completing on `bar` (size and addresses multiples of 16).
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          smem_address(dst)),
      "l"(src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
}

// 2D tensor copy of one box at (inner, outer) coordinates; out-of-range rows are zero-filled.
__device__ __forceinline__ void tensor_copy_2d_g2s(void* dst, const CUtensorMap* map, int inner, int outer,
                                                   uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(smem_address(bar))
      : "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
}

// Two FP8 e4m3 codes (low byte, high byte) -> two floats, exactly, without branches
// (cvt to f16x2 is exact for every e4m3 value).
__device__ __forceinline__ float2 e4m3x2_to_float2(uint16_t codes) {
  uint32_t halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(codes));
  const __half2 h = *reinterpret_cast<const __half2*>(&halves);
  return __half22float2(h);
}

// prmt.b32 in its default mode: byte i of the result = byte (selector nibble i) of {b, a}; only the
// selector's low 16 bits count, and a nibble's bit 3 would replicate a sign, so callers keep it
// clear. (__byte_perm masks the selector with an extra instruction.)
__device__ __forceinline__ uint32_t permute_bytes(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
}

// Keeps the compiler from moving accumulator reads/writes across an async wgmma.
__device__ __forceinline__ void fence_register(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_register(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

template <uint32_t Registers>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Registers));
}
template <uint32_t Registers>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(Registers));
}

__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Shared-memory matrix descriptors for a K-major FP8 operand written by TMA with 64- or 128-byte
// swizzle: rows of 64 / 128 bytes, 8-row core groups 512 / 1024 bytes apart (stride byte offset),
// leading offset unused. A k offset inside the swizzle row is added to the start address (>> 4).
__device__ __forceinline__ uint64_t smem_descriptor_k_major_sw64(const void* tile) {
  const uint64_t address = smem_address(tile);
  uint64_t desc = (address & 0x3FFFF) >> 4;
  desc |= uint64_t{1} << 16;           // leading byte offset (unused with swizzle), 16 bytes
  desc |= uint64_t{512 >> 4} << 32;    // stride byte offset
  desc |= uint64_t{2} << 62;           // layout type: 64-byte swizzle
  return desc;
}
__device__ __forceinline__ uint64_t smem_descriptor_k_major_sw128(const void* tile) {
  const uint64_t address = smem_address(tile);
  uint64_t desc = (address & 0x3FFFF) >> 4;
  desc |= uint64_t{1} << 16;           // leading byte offset (unused with swizzle), 16 bytes
  desc |= uint64_t{1024 >> 4} << 32;   // stride byte offset
  desc |= uint64_t{1} << 62;           // layout type: 128-byte swizzle
  return desc;
}

}  // namespace fireq::gemm::ptx
