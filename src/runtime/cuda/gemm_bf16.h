// The BF16 path's linears through cuBLASLt: Y[tokens][out] (+)= X[tokens][in] . W[out][in]^T with
// BF16 X and W, FP32 accumulation and FP32 Y (row-major throughout). Accumulating into Y fuses the
// residual add of o_proj and down_proj. Shapes of at most kTunedTokens tokens (decode) are tuned
// once: the heuristic's candidates are timed into a scratch output and the fastest is kept.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

namespace fireq::cuda_runtime {

class Bf16Gemm {
 public:
  static constexpr int kTunedTokens = 64;
  static constexpr int kCandidates = 8;
  // max_out: the widest output (sizes the tuning scratch, kTunedTokens x max_out floats).
  Bf16Gemm(size_t workspace_bytes, int max_out);
  ~Bf16Gemm();
  Bf16Gemm(const Bf16Gemm&) = delete;
  Bf16Gemm& operator=(const Bf16Gemm&) = delete;

  void run(const uint16_t* x, const uint16_t* w, float* y, int tokens, int out, int in, bool accumulate,
           cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(const uint16_t* x, const uint16_t* w, int tokens, int out, int in, cudaStream_t stream);
  float time_algo(const Plan& p, const cublasLtMatmulAlgo_t& algo, const uint16_t* x, const uint16_t* w,
                  cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  float* scratch_ = nullptr;  // tuning output
  std::map<std::tuple<int, int, int>, Plan> plans_;  // by (tokens, out, in)
};

}  // namespace fireq::cuda_runtime
