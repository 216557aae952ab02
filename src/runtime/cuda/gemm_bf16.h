// The BF16 path's linears through cuBLASLt: Y[tokens][out] (+)= X[tokens][in] . W[out][in]^T with
// BF16 X and W, FP32 accumulation and FP32 Y (row-major throughout). Accumulating into Y fuses the
// residual add of o_proj and down_proj.
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
  explicit Bf16Gemm(size_t workspace_bytes);
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
  const Plan& plan(int tokens, int out, int in);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int, int>, Plan> plans_;  // by (tokens, out, in)
};

}  // namespace fireq::cuda_runtime
