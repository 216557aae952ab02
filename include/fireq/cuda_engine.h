// The CUDA engine: the Llama forward pass of the CPU reference engine (engine.h) on one GPU, with
// a paged KV cache shared by several sequences, batched steps that mix prefill chunks and decode
// tokens, and sampling on the GPU.
//
// This is the BF16 path (docs/ENGINE.md): weights in BF16, every linear through cuBLASLt (BF16
// inputs, FP32 accumulation and output), the residual stream and RMSNorm in FP32, RoPE from the
// same (cos, sin) table as the CPU reference, keys/values in a paged BF16 cache, attention in FP32.
//
// Memory is planned once, at construction: weights, the activations of the largest step
// (max_step_tokens tokens), the logits rows, and a pool of KV pages sized from the GPU memory left
// free (capped by kv_cache_bytes). A sequence takes pages as it grows and gives them all back when
// it is released.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fireq/engine.h"
#include "fireq/model.h"
#include "fireq/sampling.h"

namespace fireq {

struct CudaEngineOptions {
  int max_context = 0;         // tokens per sequence; 0: the config's max_position_embeddings
  int max_step_tokens = 2048;  // tokens of one step (all chunks together): sizes the activations
  int max_sequences = 16;      // sequences alive at once
  int max_logit_rows = 512;    // rows of logits one step may return (LogitsFor::kAll needs n)
  int page_size = 16;          // tokens per KV page
  int64_t kv_cache_bytes = 0;  // cap on the KV pool; 0: all memory left after the rest, less a reserve
  bool print_plan = true;      // print the memory plan to stderr at construction
};

// What the engine allocates, decided before any allocation.
struct CudaMemoryPlan {
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;    // buffers of the largest step, logits, sampling, cuBLASLt workspace
  int64_t kv_bytes_per_page = 0;   // all layers, K and V
  int64_t kv_pages = 0;
  int64_t kv_tokens() const { return kv_pages * page_size; }
  int page_size = 0;
  int64_t gpu_free_bytes = 0;      // free when planned
  int64_t gpu_total_bytes = 0;
  int64_t reserve_bytes = 0;       // left for the CUDA context, cuBLASLt and fragmentation
  std::string describe() const;    // a few lines for a log
};

// Sizes every buffer for `config` and `options` given the GPU's free memory. Fails (naming the
// numbers) when the weights and activations do not fit, or when the KV pool cannot hold one
// sequence of max_context tokens.
CudaMemoryPlan plan_cuda_memory(const LlamaConfig& config, const CudaEngineOptions& options,
                                int64_t gpu_free_bytes, int64_t gpu_total_bytes);

// Number of CUDA devices (0 when there is no GPU or no driver); never throws.
int cuda_device_count();

struct CudaDeviceInfo {
  std::string name;
  int sm_count = 0;
  int64_t free_bytes = 0, total_bytes = 0;
};
CudaDeviceInfo cuda_device_info();  // of the current device

class CudaEngine final : public Engine {
 public:
  // Converts `weights` to BF16 on the GPU (the host copy is not kept).
  CudaEngine(const LlamaWeights& weights, const CudaEngineOptions& options = {});
  // Weights drawn on the GPU: uniform in +-sqrt(3)*std with std 0.02 (norms around 1), seeded.
  // For benchmarks of real shapes whose weights cannot be shipped.
  static std::unique_ptr<CudaEngine> with_random_weights(const LlamaConfig& config, uint64_t seed,
                                                         const CudaEngineOptions& options = {});
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const LlamaConfig& config() const override;
  const CudaMemoryPlan& memory_plan() const;
  int max_context() const override;

  // The Engine interface (engine.h), on a sequence the engine keeps for it.
  void reset() override;
  int position() const override;
  std::vector<float> forward(std::span<const int32_t> tokens, LogitsFor which) override;

  // ----- Several sequences -----
  // A new empty sequence (its id), or -1 when max_sequences are alive.
  int add_sequence();
  // Frees the sequence's KV pages at once; its id may be reused.
  void release_sequence(int sequence);
  int sequence_length(int sequence) const;
  // KV tokens still free in the pool (whole pages).
  int64_t free_kv_tokens() const;
  // Whether `tokens` more tokens fit into `sequence` now (context and KV pages).
  bool can_grow(int sequence, int tokens) const;

  struct Chunk {
    int sequence = 0;
    std::span<const int32_t> tokens;  // appended at the sequence's current length
  };
  // Runs every chunk in one step (one GEMM per linear over all their tokens). Keeps, on the GPU,
  // the logits of each chunk's last token (row i for chunk i). Fails, before any work, when a
  // chunk does not fit (context, KV pool, max_step_tokens), naming the sequence.
  void step(std::span<const Chunk> chunks);
  // The logits rows the last step kept, copied to the host: [chunks, vocab].
  std::vector<float> last_logits() const;
  // One token per chunk of the last step, drawn on the GPU with each chunk's sequence's sampling
  // options (set_sampling; greedy by default). Same options, seed and logits give the same tokens
  // as fireq::Sampler up to the order of floating-point sums.
  std::vector<int32_t> sample();
  void set_sampling(int sequence, const SamplingOptions& options);

  // Waits for the GPU (for timing).
  void synchronize() const;

  // While on, every step records CUDA events between its ops; take_profile() returns the GPU time
  // per op (milliseconds, summed over the steps since the last call, in the order of the forward
  // pass) and starts over. Events cost a little: profile separately from timing.
  void set_profiling(bool on);
  std::vector<std::pair<std::string, double>> take_profile();

 private:
  struct Impl;
  explicit CudaEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fireq
