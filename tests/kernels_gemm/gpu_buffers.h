// Small helpers shared by the GEMM's GPU test and bench: an owning device buffer and a fast
// random fill for canonical INT4 weights (the kernel does not care how the codes were made).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fireq/cuda_check.h"
#include "fireq/kernels/gemm_reference.h"

namespace fireq::gemm::testing {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count) FIREQ_CUDA_CHECK(cudaMalloc(&ptr_, count * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; o.count_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(count_, o.count_);
    return *this;
  }
  ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    FIREQ_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    FIREQ_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  void fill_bytes(int byte) { FIREQ_CUDA_CHECK(cudaMemset(ptr_, byte, count_ * sizeof(T))); }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// splitmix64: fast, good enough to make random weight codes.
inline uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Canonical INT4 weights with uniform codes in [-8, 7] and FP8 group scales in [2^-5, 0.234]
// (Llama weights' absmax / 7 after the per-tensor scale s_t).
inline Int4Weights random_int4_weights(int n, int k, int group_size, uint64_t seed) {
  Int4Weights w;
  w.n = n;
  w.k = k;
  w.group_size = group_size;
  w.packed.resize(static_cast<size_t>(n) * k / 2);
  w.scales.resize(static_cast<size_t>(n) * (k / group_size));
  uint64_t state = seed;
  for (size_t i = 0; i < w.packed.size(); i += 8) {
    const uint64_t r = next_random(state);
    std::memcpy(&w.packed[i], &r, std::min<size_t>(8, w.packed.size() - i));
  }
  for (auto& s : w.scales) s = static_cast<uint8_t>(0x10 + next_random(state) % 24);
  return w;
}

}  // namespace fireq::gemm::testing
