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

// One thread per 32-bit word of the kernel layout (gemm.h): a word of codes holds 8 INT4 codes of
// two A-fragment registers (4 consecutive k of row r0 in the low half, of row r0 + 8 in the high
// half); a word of the record's scale tail holds 4 rows' scales. Rows past N (padding of the last
// pair) are zero.
__global__ void prepare_kernel(const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
                               uint32_t* __restrict__ out, int n, int k, int group_size, bool swiglu) {
  const int groups = k / group_size;
  const int blocks_per_group = group_size / kBlockK;
  const int record_words = pair_record_bytes(blocks_per_group) / 4;
  const int code_bytes = 2 * blocks_per_group * kChunkBytes;
  const int n_tiles = n / kTileRows;
  const size_t words = static_cast<size_t>((n_tiles + 1) / 2) * groups * record_words;
  for (size_t w = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; w < words;
       w += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t record = w / record_words;
    const int offset = static_cast<int>(w % record_words) * 4;
    const int pair = static_cast<int>(record / groups);
    const int group = static_cast<int>(record % groups);
    if (offset >= code_bytes) {  // scales of tile t, rows r .. r + 3
      const int tile = 2 * pair + (offset - code_bytes) / kTileRows;
      const int r = (offset - code_bytes) % kTileRows;
      uint32_t word = 0;
      if (tile < n_tiles)
        for (int i = 0; i < 4; ++i)
          word |= static_cast<uint32_t>(scales[static_cast<size_t>(canonical_row(tile, r + i, swiglu, n)) * groups + group])
                  << (8 * i);
      out[w] = word;
      continue;
    }
    const int tile = 2 * pair + offset / (blocks_per_group * kChunkBytes);
    if (tile >= n_tiles) {
      out[w] = 0;
      continue;
    }
    const int block = group * blocks_per_group + (offset / kChunkBytes) % blocks_per_group;
    const int thread = (offset % kChunkBytes) / 16;
    const int j = (offset % 16) / 4;
    const int warp = thread / 32, lane = thread % 32;
    const int r0 = warp * 16 + lane / 4;
    const int k0 = block * kBlockK + (j / 2) * 32 + (j % 2) * 16 + (lane % 4) * 4;
    const uint8_t* low = packed + static_cast<size_t>(canonical_row(tile, r0, swiglu, n)) * (k / 2) + k0 / 2;
    const uint8_t* high = packed + static_cast<size_t>(canonical_row(tile, r0 + 8, swiglu, n)) * (k / 2) + k0 / 2;
    out[w] = static_cast<uint32_t>(low[0]) | (static_cast<uint32_t>(low[1]) << 8) |
             (static_cast<uint32_t>(high[0]) << 16) | (static_cast<uint32_t>(high[1]) << 24);
  }
}

}  // namespace

void prepare_weights(const uint8_t* packed, const uint8_t* scales, PreparedWeights& out, cudaStream_t stream) {
  if (packed == nullptr || scales == nullptr || out.data == nullptr) fail("prepare_weights: null canonical or prepared buffer");
  if (out.group_size != 64 && out.group_size != 128) fail("prepare_weights: group size ", out.group_size, " is not 64 or 128");
  if (out.n <= 0 || out.n % kTileRows != 0) fail("prepare_weights: N = ", out.n, " is not a positive multiple of 64");
  if (out.k <= 0 || out.k % out.group_size != 0)
    fail("prepare_weights: K = ", out.k, " is not a positive multiple of the group size ", out.group_size);
  if (out.swiglu_interleaved && (out.n / 2) % 32 != 0)
    fail("prepare_weights: SwiGLU needs N/2 = ", out.n / 2, " to be a multiple of 32");
  const int threads = 256;
  const size_t words = prepared_weight_bytes(out.n, out.k, out.group_size) / 4;
  const int blocks = static_cast<int>(std::min<size_t>((words + threads - 1) / threads, 65536));
  prepare_kernel<<<blocks, threads, 0, stream>>>(packed, scales, reinterpret_cast<uint32_t*>(out.data), out.n, out.k,
                                                 out.group_size, out.swiglu_interleaved);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::gemm
