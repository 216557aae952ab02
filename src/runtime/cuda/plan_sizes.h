// Buffer sizes shared by the memory plan and the allocations, so that the two cannot disagree.
#pragma once

#include <cstdint>

#include "fireq/config.h"
#include "fireq/cuda_engine.h"

namespace fireq::cuda_runtime {

constexpr int64_t kGemmWorkspaceBytes = int64_t{32} << 20;

int64_t weight_bytes(const LlamaConfig& config, const CudaModelFormat& format);
// The buffers carved from the activation arena, and everything of the step (the arena plus the
// cuBLASLt workspace and tuning scratch and the sampling sort space, allocated beside it).
int64_t activation_arena_bytes(const LlamaConfig& config, const CudaEngineOptions& options, int max_context,
                               const CudaModelFormat& format);
int64_t activation_bytes(const LlamaConfig& config, const CudaEngineOptions& options, int max_context,
                         const CudaModelFormat& format);
// The KV pool's arena: `pages` pages (the FireQ path adds one scratch page that padded graph rows
// write into) with room for the alignment of its buffers.
int64_t kv_arena_bytes(const LlamaConfig& config, const CudaMemoryPlan& plan, const CudaModelFormat& format);
int64_t metadata_ints(const CudaEngineOptions& options, int max_context);
int pages_per_sequence(int max_context, int page_size);

}  // namespace fireq::cuda_runtime
