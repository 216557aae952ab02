// The FireQ path of the CUDA engine (docs/ENGINE.md): INT4 weights in the GEMM's kernel layout, FP8
// per-token activations, FP8 queries and the paged INT4 KV cache of include/fireq/kernels/, and the
// decoder layers over them. The engine keeps what both paths share (embeddings, final norm, lm_head,
// pages, metadata, sampling); this class owns the layers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "device_arena.h"
#include "fireq/config.h"
#include "fireq/cuda_engine.h"
#include "fireq/kernels/attention.h"
#include "fireq/kernels/gemm.h"
#include "fireq/quant.h"

namespace fireq::cuda_runtime {

// Bytes the FireQ path allocates, for the memory plan (plan_sizes.h adds the shared buffers).
int64_t fireq_layer_weight_bytes(const LlamaConfig& config, int group_size);  // all layers
int64_t fireq_kv_bytes_per_page(const LlamaConfig& config, int page_size);    // all layers, K and V
int64_t fireq_activation_bytes(const LlamaConfig& config, const CudaEngineOptions& options, int group_size);

// K as the checkpoint stores it: the next multiple of the group (docs/FORMAT.md, zero_pad).
int padded_k(int k, int group_size);

// RoPE (cos, sin) per position and pair, [positions][head_dim / 2][2], computed as the CPU
// reference engine does (float angle, double cos/sin rounded once); both paths use it.
std::vector<float> rope_cos_sin(const LlamaConfig& config, int positions);

// Fails, naming the recipe field, unless the checkpoint's recipe is what the FireQ path runs: W4A8
// with FP8 queries and an INT4 KV cache with BF16 scales.
void check_fireq_recipe(const QuantizedModel& model);

// A stacked INT4 linear in the canonical layout (host): the rows of `sites` (q|k|v, gate|up or one
// linear) one after another under one tensor scale, the largest s_t of the members, each member's
// FP8 group scales multiplied by its power-of-two ratio to it (exact, or fails naming the tensor).
// Also fails, naming the tensor, for what the GEMM does not run (BF16 weights or scales, padded K,
// another group size, biases).
struct StackedLinear {
  std::vector<uint8_t> packed;  // [n][k / 2]
  std::vector<uint8_t> scales;  // [n][k / group_size] e4m3 codes
  int n = 0;
  float s_inv = 1.0f;
};
StackedLinear stacked_linear(const QuantizedModel& model, int layer, std::initializer_list<LinearSite> sites,
                             int group_size);

// Device metadata of one step in the form the FireQ kernels read. Sequence i of the step is chunk
// i; the first `decode_sequences` chunks have one token each (split-KV attention), the rest run the
// prefill attention kernel.
struct FireqStep {
  const int32_t* positions = nullptr;       // [tokens]
  const int32_t* token_sequence = nullptr;  // [tokens]
  const int32_t* block_table = nullptr;     // [sequences][table_stride]
  const int32_t* query_start = nullptr;     // [sequences + 1]
  const int32_t* seq_lens = nullptr;        // [sequences], cached tokens after this step's writes
  int tokens = 0;
  int sequences = 0;
  int table_stride = 0;
  int decode_sequences = 0;
  int decode_max_seq_len = 0;   // a power-of-two bound over the step's contexts (the split-KV plan)
  int prefill_max_query_len = 0;
  int prefill_max_seq_len = 0;
};

class FireqLayers {
 public:
  using Mark = std::function<void(const char*)>;

  // Carves the layers' weights from `weights`, the step buffers from `activations`, and the INT4 KV
  // pool of `kv_pages` pages (fireq_kv_bytes_per_page each) from `kv`.
  FireqLayers(const LlamaConfig& config, const CudaEngineOptions& options, int max_context, int group_size,
              int64_t kv_pages, DeviceArena& weights, DeviceArena& activations, DeviceArena& kv);
  ~FireqLayers();
  FireqLayers(const FireqLayers&) = delete;
  FireqLayers& operator=(const FireqLayers&) = delete;

  // The checkpoint's layers (host), converted on the GPU through a canonical staging buffer.
  void load(const QuantizedModel& model, cudaStream_t stream);
  // Random INT4 codes and FP8 group scales in the checkpoint layout, converted the same way.
  void randomize(uint64_t seed, cudaStream_t stream);

  // Every decoder layer over the BF16 residual stream [tokens][hidden] (updated in place).
  void forward(const FireqStep& step, const float* rope_cos_sin, int rope_positions, uint16_t* residual,
               cudaStream_t stream, const Mark& mark) const;

 private:
  struct Linear {
    gemm::PreparedWeights weights;
    float s_inv = 1.0f;
  };
  struct Layer {
    uint16_t* attn_norm = nullptr;  // BF16 [hidden]
    uint16_t* ffn_norm = nullptr;
    float* post_rope_scale = nullptr;  // [kv_heads][head_dim], or null
    Linear qkv, o, gate_up, down;
  };
  void attention(const FireqStep& step, int layer, cudaStream_t stream) const;
  size_t largest_linear_bytes() const;

  LlamaConfig config_;
  int group_size_ = 0;
  std::vector<Layer> layers_;
  std::vector<attention::PagedKvCache> caches_;  // per layer

  // Step buffers.
  uint8_t* x_fp8_ = nullptr;      // [tokens][widest padded K] FP8 input of the next GEMM
  uint8_t* x_unpadded_ = nullptr; // [tokens][widest K], only when some K is padded to the group
  float* x_scales_ = nullptr;     // [tokens]
  uint16_t* qkv_ = nullptr;       // BF16 [tokens][q + 2 kv]
  uint8_t* q_fp8_ = nullptr;      // [tokens][q_heads][head_dim]
  uint16_t* q_scale_ = nullptr;   // BF16 [tokens][q_heads]
  uint16_t* attended_ = nullptr;  // BF16 [tokens][q]
  uint16_t* activated_ = nullptr; // BF16 [tokens][intermediate]
  void* attention_workspace_ = nullptr;  // split-KV partial results, its own allocation
  gemm::SplitKWorkspace splitk_;
};

}  // namespace fireq::cuda_runtime
