// Small helpers shared by the GEMM's GPU test and bench: the shared device buffer and a fast
// random fill for canonical INT4 weights (the kernel does not care how the codes were made).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../support/device_buffer.h"
#include "fireq/cuda_check.h"
#include "fireq/kernels/gemm_reference.h"

namespace fireq::gemm::testing {

using fireq::testing::DeviceBuffer;

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
