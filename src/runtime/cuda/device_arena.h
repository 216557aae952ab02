// One cudaMalloc carved into 256-byte aligned buffers, freed as a whole: the memory plan sizes each
// arena, and a buffer that overflows its arena names itself.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fireq/cuda_check.h"
#include "fireq/error.h"

namespace fireq::cuda_runtime {

class DeviceArena {
 public:
  explicit DeviceArena(int64_t bytes) : capacity_(bytes) { FIREQ_CUDA_CHECK(cudaMalloc(&base_, bytes)); }
  ~DeviceArena() { cudaFree(base_); }
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  template <typename T>
  T* take(int64_t count, const char* what) {
    const int64_t bytes = (count * int64_t(sizeof(T)) + 255) / 256 * 256;
    if (used_ + bytes > capacity_)
      fail("CUDA engine: buffer '", what, "' overflows its arena (", used_ + bytes, " > ", capacity_,
           " bytes): the memory plan is out of date");
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += bytes;
    return p;
  }

 private:
  void* base_ = nullptr;
  int64_t capacity_ = 0, used_ = 0;
};

}  // namespace fireq::cuda_runtime
