// Sampling on the GPU with fireq::Sampler's rules (src/runtime/cpu/sampling.cpp): argmax with ties
// to the lowest id; otherwise candidates by descending logit (ties by id: a stable sort of ids in
// order), probabilities exp((l - top) / T) in double over the top k, the nucleus as the shortest
// prefix reaching top_p, and one splitmix64 uniform per draw from the row's sequence state.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <climits>

#include "fireq/cuda_check.h"
#include "kernels.h"

namespace fireq::cuda_runtime {
namespace {

constexpr int kThreads = 512;

__global__ void argmax_kernel(const float* logits, int vocab, int32_t* out, int* nan_rows) {
  const float* row = logits + size_t(blockIdx.x) * vocab;
  float best = -INFINITY;
  int best_id = INT_MAX;
  bool nan = false;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    nan |= isnan(v);
    if (v > best || best_id == INT_MAX) {  // strictly greater: the lowest id wins ties
      best = v;
      best_id = i;
    }
  }
  struct Best { float value; int id; };
  using Reduce = cub::BlockReduce<Best, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ int any_nan;
  if (threadIdx.x == 0) any_nan = 0;
  __syncthreads();
  if (nan) atomicOr(&any_nan, 1);
  const Best winner = Reduce(storage).Reduce(Best{best, best_id}, [](const Best& a, const Best& b) {
    return (a.value > b.value || (a.value == b.value && a.id < b.id)) ? a : b;
  });
  __syncthreads();
  if (threadIdx.x == 0) {
    out[blockIdx.x] = winner.id;
    if (any_nan) atomicAdd(nan_rows, 1);
  }
}

__global__ void iota_rows_kernel(int32_t* ids, int vocab, int* offsets, int rows) {
  const size_t count = size_t(rows) * vocab;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x)
    ids[i] = int32_t(i % vocab);
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r <= rows; r += gridDim.x * blockDim.x) offsets[r] = r * vocab;
}

__device__ double next_uniform(uint64_t& state) {  // splitmix64, as fireq::Sampler
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

using Scan = cub::BlockScan<double, kThreads>;
using SumReduce = cub::BlockReduce<double, kThreads>;
using MinReduce = cub::BlockReduce<int, kThreads>;
struct SampleStorage {
  union {
    typename Scan::TempStorage scan;
    typename SumReduce::TempStorage sum;
    typename MinReduce::TempStorage min;
  } cub;
  double broadcast;
  int found;
};

// The first i < count whose inclusive prefix sum of probability satisfies `reached` (or -1), and
// that prefix sum. Chunks of the block's width, carrying the running sum.
template <typename Probability, typename Reached>
__device__ int first_prefix(int count, Probability probability, Reached reached, double& prefix_at,
                            SampleStorage& s) {
  double carry = 0;
  for (int base = 0; base < count; base += kThreads) {
    const int i = base + threadIdx.x;
    const double p = i < count ? probability(i) : 0.0;
    double inclusive, chunk_total;
    Scan(s.cub.scan).InclusiveSum(p, inclusive, chunk_total);
    inclusive += carry;
    __syncthreads();
    const int candidate = (i < count && reached(inclusive)) ? i : INT_MAX;
    const int first = MinReduce(s.cub.min).Reduce(candidate, [](int a, int b) { return a < b ? a : b; });
    if (threadIdx.x == 0) s.found = first;
    __syncthreads();
    if (s.found != INT_MAX) {
      if (i == s.found) s.broadcast = inclusive;
      __syncthreads();
      prefix_at = s.broadcast;
      return s.found;
    }
    carry += chunk_total;
  }
  prefix_at = carry;
  return -1;
}

__global__ void sample_sorted_kernel(const float* sorted_logits, const int32_t* sorted_ids, int vocab,
                                     const RowSampling* options, uint64_t* rng_states, int32_t* out) {
  const RowSampling o = options[blockIdx.x];
  if (o.temperature <= 0.0) return;  // greedy: the argmax is already there
  __shared__ SampleStorage s;
  const float* logits = sorted_logits + size_t(blockIdx.x) * vocab;
  const int32_t* ids = sorted_ids + size_t(blockIdx.x) * vocab;
  int keep = (o.top_k > 0 && o.top_k < vocab) ? o.top_k : vocab;
  const double top = logits[0], temperature = o.temperature;
  auto probability = [&](int i) { return exp((double(logits[i]) - top) / temperature); };

  double local = 0;
  for (int i = threadIdx.x; i < keep; i += kThreads) local += probability(i);
  double total = SumReduce(s.cub.sum).Sum(local);
  if (threadIdx.x == 0) s.broadcast = total;
  __syncthreads();
  total = s.broadcast;
  __syncthreads();

  if (o.top_p < 1.0) {
    const double threshold = o.top_p * total;
    double cumulative;
    const int last = first_prefix(keep, probability, [&](double sum) { return sum >= threshold; }, cumulative, s);
    if (last >= 0) keep = last + 1;  // else every candidate, cumulative = their sum
    total = cumulative > 0 ? cumulative : probability(0);
  }
  __syncthreads();
  if (threadIdx.x == 0) s.broadcast = next_uniform(rng_states[o.slot]) * total;
  __syncthreads();
  const double target = s.broadcast;
  __syncthreads();
  double unused;
  const int chosen = first_prefix(keep, probability, [&](double sum) { return sum > target; }, unused, s);
  if (threadIdx.x == 0) out[blockIdx.x] = ids[chosen >= 0 ? chosen : keep - 1];
}

// Workspace: sorted keys, ids in and out, row offsets, then cub's temporary storage.
struct SortBuffers {
  float* keys_out;
  int32_t* ids_in;
  int32_t* ids_out;
  int* offsets;
  void* cub_temp;
  size_t cub_bytes;
};

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t cub_sort_bytes(int rows, int vocab) {
  size_t bytes = 0;
  FIREQ_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), rows * vocab, rows,
      static_cast<const int*>(nullptr), static_cast<const int*>(nullptr) + 1));
  return bytes;
}

SortBuffers carve(void* workspace, int rows, int vocab) {
  const size_t n = size_t(rows) * vocab;
  char* p = static_cast<char*>(workspace);
  SortBuffers b;
  b.keys_out = reinterpret_cast<float*>(p);
  p += align256(n * sizeof(float));
  b.ids_in = reinterpret_cast<int32_t*>(p);
  p += align256(n * sizeof(int32_t));
  b.ids_out = reinterpret_cast<int32_t*>(p);
  p += align256(n * sizeof(int32_t));
  b.offsets = reinterpret_cast<int*>(p);
  p += align256((rows + 1) * sizeof(int));
  b.cub_temp = p;
  b.cub_bytes = cub_sort_bytes(rows, vocab);
  return b;
}

}  // namespace

void argmax_rows(const float* logits, int rows, int vocab, int32_t* out, int* nan_rows, cudaStream_t stream) {
  argmax_kernel<<<rows, kThreads, 0, stream>>>(logits, vocab, out, nan_rows);
  FIREQ_CUDA_CHECK_LAUNCH();
}

size_t sampling_workspace_bytes(int rows, int vocab) {
  const size_t n = size_t(rows) * vocab;
  return align256(n * sizeof(float)) + 2 * align256(n * sizeof(int32_t)) + align256((rows + 1) * sizeof(int)) +
         cub_sort_bytes(rows, vocab);
}

void sample_rows(const float* logits, int rows, int vocab, const RowSampling* row_options,
                 uint64_t* rng_states, void* workspace, size_t workspace_bytes, int32_t* out,
                 cudaStream_t stream) {
  if (workspace_bytes < sampling_workspace_bytes(rows, vocab))
    fail("sampling: workspace of ", workspace_bytes, " bytes is too small for ", rows, " rows");
  const SortBuffers b = carve(workspace, rows, vocab);
  iota_rows_kernel<<<256, 256, 0, stream>>>(b.ids_in, vocab, b.offsets, rows);
  FIREQ_CUDA_CHECK_LAUNCH();
  size_t cub_bytes = b.cub_bytes;
  FIREQ_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
      b.cub_temp, cub_bytes, logits, b.keys_out, b.ids_in, b.ids_out, rows * vocab, rows, b.offsets,
      b.offsets + 1, stream));
  sample_sorted_kernel<<<rows, kThreads, 0, stream>>>(b.keys_out, b.ids_out, vocab, row_options, rng_states, out);
  FIREQ_CUDA_CHECK_LAUNCH();
}

}  // namespace fireq::cuda_runtime
