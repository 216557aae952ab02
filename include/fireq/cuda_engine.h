// The CUDA engine: the Llama forward pass of the CPU reference engine (engine.h) on one GPU, with
// a paged KV cache shared by several sequences, batched steps that mix prefill chunks and decode
// tokens, and sampling on the GPU.
//
// Two paths (docs/ENGINE.md), chosen by the checkpoint:
//  - BF16 (float checkpoints): weights in BF16, every linear through cuBLASLt (BF16 inputs, FP32
//    accumulation and output), the residual stream and RMSNorm in FP32, RoPE from the same (cos,
//    sin) table as the CPU reference, keys/values in a paged BF16 cache, attention in FP32.
//  - FireQ (FireQ checkpoints, docs/FORMAT.md): INT4 weights in the GEMM's kernel layout, FP8
//    per-token activations, FP8 queries, a paged INT4 KV cache; every op of a layer is a FireQ
//    kernel (include/fireq/kernels/). The residual stream is BF16 (the GEMM epilogues read and
//    write BF16); embeddings, final norm and lm_head stay BF16 (cuBLASLt).
// Pure decode steps (one token per sequence) are replayed from CUDA graphs captured per batch
// bucket (1, 2, 4, ...), padded to the bucket.
//
// Memory is planned once, at construction: weights, the activations of the largest step
// (max_step_tokens tokens), the logits rows, and a pool of KV pages sized from the GPU memory left
// free (capped by kv_cache_bytes). A sequence takes pages as it grows and gives them all back when
// it is released.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fireq/engine.h"
#include "fireq/model.h"
#include "fireq/quant.h"
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
  bool cuda_graphs = true;     // replay pure decode steps from graphs (FireQ path)
};

// Which kernels the engine runs: the BF16 path or the FireQ path (INT4 weights with FP8 group
// scales of group_size along K, FP8 activations, INT4 KV cache).
struct CudaModelFormat {
  bool fireq = false;
  int group_size = 128;
};

// What the engine allocates, decided before any allocation.
struct CudaMemoryPlan {
  bool fireq = false;              // INT4 weights and pages (FireQ path), else BF16
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
                                int64_t gpu_free_bytes, int64_t gpu_total_bytes,
                                const CudaModelFormat& format = {});

// Number of CUDA devices (0 when there is no GPU or no driver); never throws.
int cuda_device_count();

struct CudaDeviceInfo {
  std::string name;
  int sm_count = 0;
  int64_t free_bytes = 0, total_bytes = 0;
};
CudaDeviceInfo cuda_device_info();  // of the current device

// Several sequences sharing one engine, stepped together: what a serving scheduler drives.
class BatchEngine {
 public:
  virtual ~BatchEngine() = default;
  virtual int max_context() const = 0;
  // A new empty sequence (its id), or -1 when no more may be alive at once.
  virtual int add_sequence() = 0;
  // Frees the sequence's KV pages at once; its id may be reused.
  virtual void release_sequence(int sequence) = 0;
  virtual int sequence_length(int sequence) const = 0;
  // KV tokens still free (whole pages).
  virtual int64_t free_kv_tokens() const = 0;
  // Tokens one step may hold, all chunks together.
  virtual int max_step_tokens() const = 0;
  // KV pages: tokens per page, and the pool's size in tokens.
  virtual int page_size() const = 0;
  virtual int64_t kv_capacity_tokens() const = 0;

  struct Chunk {
    int sequence = 0;
    std::span<const int32_t> tokens;  // appended at the sequence's current length
  };
  // Runs every chunk in one step; keeps the logits of each chunk's last token (row i: chunk i).
  virtual void step(std::span<const Chunk> chunks) = 0;
  // One token per chunk of the last step, with each chunk's sequence's sampling options. Rows
  // whose `draw` is 0 take the argmax without consuming their random state (a prefill chunk that
  // does not end its prompt); empty `draw`: every row draws.
  virtual std::vector<int32_t> sample(std::span<const uint8_t> draw = {}) = 0;
  virtual void set_sampling(int sequence, const SamplingOptions& options) = 0;
};

class CudaEngine final : public Engine, public BatchEngine {
 public:
  // Converts `weights` to BF16 on the GPU (the host copy is not kept).
  CudaEngine(const LlamaWeights& weights, const CudaEngineOptions& options = {});
  // The FireQ path over a FireQ checkpoint: the linears are converted to the GEMM's kernel layout
  // on the GPU (q|k|v stacked, gate|up interleaved). Fails, naming the tensor or recipe field, for
  // what the kernels do not run: skipped (BF16) layers, biases, BF16 weight scales, activations,
  // queries or KV cache not quantized.
  explicit CudaEngine(const QuantizedModel& model, const CudaEngineOptions& options = {});
  // Weights drawn on the GPU: uniform in +-sqrt(3)*std with std 0.02 (norms around 1), seeded;
  // for the FireQ format, INT4 codes uniform in [-7, 7] with group scales of the same std, drawn in
  // the checkpoint's layout and converted like a loaded checkpoint. For benchmarks of real shapes
  // whose weights cannot be shipped.
  static std::unique_ptr<CudaEngine> with_random_weights(const LlamaConfig& config, uint64_t seed,
                                                         const CudaEngineOptions& options = {},
                                                         const CudaModelFormat& format = {});
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const LlamaConfig& config() const override;
  const CudaMemoryPlan& memory_plan() const;
  const CudaModelFormat& format() const;
  // Decode steps replayed from a CUDA graph, and graphs captured, since construction.
  int64_t graph_replays() const;
  int graphs_captured() const;
  int max_context() const override;  // Engine and BatchEngine

  // The Engine interface (engine.h), on a sequence the engine keeps for it.
  void reset() override;
  int position() const override;
  std::vector<float> forward(std::span<const int32_t> tokens, LogitsFor which) override;

  // ----- Several sequences (BatchEngine) -----
  int add_sequence() override;  // -1 when max_sequences are alive
  void release_sequence(int sequence) override;
  int sequence_length(int sequence) const override;
  int64_t free_kv_tokens() const override;
  int max_step_tokens() const override;
  int page_size() const override;
  int64_t kv_capacity_tokens() const override;
  // Whether `tokens` more tokens fit into `sequence` now (context and KV pages).
  bool can_grow(int sequence, int tokens) const;

  // One GEMM per linear over all the chunks' tokens; the logits rows stay on the GPU. Fails,
  // before any work, when a chunk does not fit (context, KV pool, max_step_tokens), naming the
  // sequence.
  void step(std::span<const Chunk> chunks) override;
  // The logits rows the last step kept, copied to the host: [chunks, vocab].
  std::vector<float> last_logits() const;
  // Drawn on the GPU (set_sampling; greedy by default). Same options, seed and logits give the
  // same tokens as fireq::Sampler up to the order of floating-point sums.
  std::vector<int32_t> sample(std::span<const uint8_t> draw = {}) override;
  void set_sampling(int sequence, const SamplingOptions& options) override;

  // Turns decode graphs on or off (options.cuda_graphs at construction); for measuring their gain.
  void set_cuda_graphs(bool on);

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

// The FireQ path's numerics on the CPU, op for op through the kernels' CPU references (BF16
// residual stream, W4A8 GEMM epilogues, quantize_qkv, prefill attention with FP8 P tiles): the
// logits [tokens][vocab] of `tokens` run as one prefill step of one sequence. The GPU matches it up
// to the FP32 summation order of its kernels. Slow (scalar references): small models or few tokens.
std::vector<float> fireq_path_reference_logits(const QuantizedModel& model, std::span<const int32_t> tokens);

// ----- Serving: generation requests over a BatchEngine -----

// The engine for a checkpoint on the GPU, as `fireq generate/ppl --device cuda` and the Python
// module open it: the FireQ path for a FireQ checkpoint (read again from `path` in its own format),
// else the BF16 path over `float_weights`. Fails with a clear message when no GPU is present.
std::unique_ptr<CudaEngine> open_cuda_engine(const std::filesystem::path& path, const LlamaWeights& float_weights,
                                             const CudaEngineOptions& options);

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> stop_tokens;  // generation ends with (and reports) the first of these
};

struct GeneratedToken {
  int request = 0;
  int32_t token = 0;
  bool last = false;  // the request ended with this token (stop token or max_new_tokens)
};

struct SchedulerOptions {
  int prefill_chunk = 512;  // prompt tokens of one request per step at most (chunked prefill)
};

// Continuous batching with chunked prefill. Each step gives every decoding request its next token,
// then fills the rest of the engine's step budget with prompt chunks, oldest request first, and
// admits waiting requests (first come, first served) while budget and KV remain. A request is
// admitted only when its whole length (prompt + max_new_tokens, in pages) fits the KV not yet
// promised to running requests, so a running request never stalls for KV; until then it waits. A
// finished request's sequence is released at once. A request that could never fit (longer than the
// context or the whole pool) is refused by submit() with the numbers.
class Scheduler {
 public:
  explicit Scheduler(BatchEngine& engine, const SchedulerOptions& options = {});
  int submit(GenerationRequest request);  // its id: 0, 1, ...
  std::vector<GeneratedToken> step();     // one engine step (nothing when idle)
  bool idle() const { return running_.empty() && waiting_.empty(); }
  int waiting() const { return static_cast<int>(waiting_.size()); }
  int running() const { return static_cast<int>(running_.size()); }

 private:
  struct Active {
    GenerationRequest request;
    int id = 0;
    int sequence = -1;
    int prefilled = 0;       // prompt tokens in the cache
    int generated = 0;
    int32_t next_token = 0;  // the last generated token, fed at the next decode
    int64_t reserved_pages = 0;
  };
  int64_t pages(int64_t tokens) const;
  int64_t promised_pages() const;  // reserved by running requests and not yet allocated
  bool admit_front();

  BatchEngine& engine_;
  SchedulerOptions options_;
  std::vector<std::unique_ptr<Active>> running_;  // admission order; pointers stay put
  std::vector<std::unique_ptr<Active>> waiting_;
  int next_id_ = 0;
};

}  // namespace fireq
