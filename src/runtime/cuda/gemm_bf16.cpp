// cuBLASLt sees column-major matrices, so the row-major product Y = X W^T is computed as its
// transpose: Y^T[out][tokens] = W[in][out]^T . X^T[in][tokens] ("TN", K contiguous in both
// operands). One plan (descriptors and the heuristic's first algorithm) per shape, kept.
#include "gemm_bf16.h"

#include "fireq/cuda_check.h"
#include "fireq/error.h"

#define FIREQ_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                           \
    const cublasStatus_t fireq_status_ = (call);                                                 \
    if (fireq_status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::fireq::fail(#call, " failed at ", __FILE__, ":", __LINE__, ": cuBLAS status ",           \
                    static_cast<int>(fireq_status_));                                            \
  } while (0)

namespace fireq::cuda_runtime {

Bf16Gemm::Bf16Gemm(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  FIREQ_CUBLAS_CHECK(cublasLtCreate(&handle_));
  FIREQ_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

Bf16Gemm::~Bf16Gemm() {
  for (auto& [shape, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

const Bf16Gemm::Plan& Bf16Gemm::plan(int tokens, int out, int in) {
  const auto key = std::make_tuple(tokens, out, in);
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  Plan p;
  FIREQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
  FIREQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose));
  FIREQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof none));
  FIREQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, in, out, in));        // W^T: [in][out]
  FIREQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, in, tokens, in));     // X^T
  FIREQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, out, tokens, out));    // Y^T

  cublasLtMatmulPreference_t preference;
  FIREQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  FIREQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, preference, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(preference);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no BF16 GEMM for tokens ", tokens, " x out ", out, " x in ", in, " (status ",
         static_cast<int>(status), ")");
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void Bf16Gemm::run(const uint16_t* x, const uint16_t* w, float* y, int tokens, int out, int in, bool accumulate,
                   cudaStream_t stream) {
  const Plan& p = plan(tokens, out, in);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  FIREQ_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                                    workspace_, workspace_bytes_, stream));
}

}  // namespace fireq::cuda_runtime
