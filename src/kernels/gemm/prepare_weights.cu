// Canonical INT4 weights -> the GEMM's kernel layout (include/fireq/kernels/gemm.h), on the GPU.
#include "fireq/cuda_check.h"
#include "fireq/error.h"
#include "fireq/kernels/gemm.h"

namespace fireq::gemm {
namespace {

// Canonical row of prepared row r in weight tile `tile`. For SwiGLU each warp's 16 rows are
// 8 gate rows then the 8 up rows of the same features, so one thread holds both accumulators.
__device__ int canonical_row(int tile, int r, bool swiglu, int n) {
  if (!swiglu) return tile * kTileRows + r;
  const int feature = tile * 32 + (r / 16) * 8 + (r % 8);
  return (r % 16) < 8 ? feature : n / 2 + feature;
}

// One thread per 32-bit word of the kernel layout: the 8 INT4 codes of two A-fragment registers
// (4 consecutive k of row r0 in the low half, of row r0 + 8 in the high half).
__global__ void prepare_chunks_kernel(const uint8_t* __restrict__ packed, uint32_t* __restrict__ chunks, int n, int k,
                                      bool swiglu) {
  const size_t words = static_cast<size_t>(n) * k / 8;
  const int blocks_k = k / kBlockK;
  for (size_t w = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; w < words;
       w += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t chunk = w / (kChunkBytes / 4);
    const int thread = static_cast<int>(w % (kChunkBytes / 4)) / 4;
    const int j = static_cast<int>(w % 4);
    const int tile = static_cast<int>(chunk / blocks_k);
    const int block = static_cast<int>(chunk % blocks_k);
    const int warp = thread / 32, lane = thread % 32;
    const int r0 = warp * 16 + lane / 4;
    const int k0 = block * kBlockK + (j / 2) * 32 + (j % 2) * 16 + (lane % 4) * 4;
    const uint8_t* low = packed + static_cast<size_t>(canonical_row(tile, r0, swiglu, n)) * (k / 2) + k0 / 2;
    const uint8_t* high = packed + static_cast<size_t>(canonical_row(tile, r0 + 8, swiglu, n)) * (k / 2) + k0 / 2;
    chunks[w] = static_cast<uint32_t>(low[0]) | (static_cast<uint32_t>(low[1]) << 8) |
                (static_cast<uint32_t>(high[0]) << 16) | (static_cast<uint32_t>(high[1]) << 24);
  }
}

__global__ void prepare_scales_kernel(const uint8_t* __restrict__ scales, uint8_t* __restrict__ out, int n, int groups,
                                      bool swiglu) {
  const size_t total = static_cast<size_t>(n) * groups;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i % kTileRows);
    const int group = static_cast<int>((i / kTileRows) % groups);
    const int tile = static_cast<int>(i / (static_cast<size_t>(kTileRows) * groups));
    out[i] = scales[static_cast<size_t>(canonical_row(tile, r, swiglu, n)) * groups + group];
  }
}

}  // namespace

void prepare_weights(const uint8_t* packed, const uint8_t* scales, PreparedWeights& out, cudaStream_t stream) {
  if (packed == nullptr || scales == nullptr || out.chunks == nullptr || out.scales == nullptr)
    fail("prepare_weights: null canonical or prepared buffer");
  if (out.group_size != 64 && out.group_size != 128) fail("prepare_weights: group size ", out.group_size, " is not 64 or 128");
  if (out.n <= 0 || out.n % kTileRows != 0) fail("prepare_weights: N = ", out.n, " is not a positive multiple of 64");
  if (out.k <= 0 || out.k % out.group_size != 0)
    fail("prepare_weights: K = ", out.k, " is not a positive multiple of the group size ", out.group_size);
  if (out.swiglu_interleaved && (out.n / 2) % 32 != 0)
    fail("prepare_weights: SwiGLU needs N/2 = ", out.n / 2, " to be a multiple of 32");
  const int threads = 256;
  const size_t words = static_cast<size_t>(out.n) * out.k / 8;
  const int blocks = static_cast<int>(std::min<size_t>((words + threads - 1) / threads, 65536));
  prepare_chunks_kernel<<<blocks, threads, 0, stream>>>(packed, reinterpret_cast<uint32_t*>(out.chunks), out.n, out.k,
                                                        out.swiglu_interleaved);
  FIREQ_CUDA_CHECK_LAUNCH();
  const int groups = out.k / out.group_size;
  const size_t scale_count = static_cast<size_t>(out.n) * groups;
  prepare_scales_kernel<<<static_cast<int>(std::min<size_t>((scale_count + threads - 1) / threads, 65536)), threads, 0,
                          stream>>>(scales, out.scales, out.n, groups, out.swiglu_interleaved);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::gemm
