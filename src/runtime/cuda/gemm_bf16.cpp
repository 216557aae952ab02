// cuBLASLt sees column-major matrices, so the row-major product Y = X W^T is computed as its
// transpose: Y^T[out][tokens] = W[in][out]^T . X^T[in][tokens] ("TN", K contiguous in both
// operands). One plan (descriptors and the heuristic's first algorithm) per shape, kept.
#include "gemm_bf16.h"

#include <cmath>

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

Bf16Gemm::Bf16Gemm(size_t workspace_bytes, int max_out) : workspace_bytes_(workspace_bytes) {
  FIREQ_CUBLAS_CHECK(cublasLtCreate(&handle_));
  FIREQ_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  FIREQ_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float) * kTunedTokens * max_out));
}

Bf16Gemm::~Bf16Gemm() {
  for (auto& [shape, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cudaFree(workspace_);
  cudaFree(scratch_);
  cublasLtDestroy(handle_);
}

// Median-free but warm: 2 launches, then the mean of 5. A candidate that fails to launch loses.
float Bf16Gemm::time_algo(const Plan& p, const cublasLtMatmulAlgo_t& algo, const uint16_t* x, const uint16_t* w,
                          cudaStream_t stream) {
  const float alpha = 1.0f, beta = 0.0f;
  cudaEvent_t start, stop;
  FIREQ_CUDA_CHECK(cudaEventCreate(&start));
  FIREQ_CUDA_CHECK(cudaEventCreate(&stop));
  float ms = INFINITY;
  bool launched = true;
  for (int i = 0; i < 7 && launched; ++i) {
    if (i == 2) FIREQ_CUDA_CHECK(cudaEventRecord(start, stream));
    launched = cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, scratch_, p.c, scratch_, p.c, &algo,
                              workspace_, workspace_bytes_, stream) == CUBLAS_STATUS_SUCCESS;
  }
  FIREQ_CUDA_CHECK(cudaEventRecord(stop, stream));
  FIREQ_CUDA_CHECK(cudaEventSynchronize(stop));
  if (launched) FIREQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

const Bf16Gemm::Plan& Bf16Gemm::plan(const uint16_t* x, const uint16_t* w, int tokens, int out, int in,
                                     cudaStream_t stream) {
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
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  const int wanted = tokens <= kTunedTokens ? kCandidates : 1;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, preference, wanted, results, &found);
  cublasLtMatmulPreferenceDestroy(preference);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no BF16 GEMM for tokens ", tokens, " x out ", out, " x in ", in, " (status ",
         static_cast<int>(status), ")");
  p.algo = results[0].algo;
  float best = INFINITY;
  for (int i = 0; found > 1 && i < found; ++i) {
    const float ms = time_algo(p, results[i].algo, x, w, stream);
    if (ms < best) {
      best = ms;
      p.algo = results[i].algo;
    }
  }
  return plans_.emplace(key, p).first->second;
}

void Bf16Gemm::run(const uint16_t* x, const uint16_t* w, float* y, int tokens, int out, int in, bool accumulate,
                   cudaStream_t stream) {
  const Plan& p = plan(x, w, tokens, out, in, stream);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  FIREQ_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                                    workspace_, workspace_bytes_, stream));
}

}  // namespace fireq::cuda_runtime
