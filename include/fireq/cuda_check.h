// Every CUDA runtime / driver / cuBLAS return code goes through these: a failure throws
// fireq::Error naming the call, the file and line, and the error string.
#pragma once

#include <cuda_runtime.h>

#include "fireq/error.h"

#define FIREQ_CUDA_CHECK(call)                                                               \
  do {                                                                                      \
    const cudaError_t fireq_status_ = (call);                                               \
    if (fireq_status_ != cudaSuccess)                                                       \
      ::fireq::fail(#call, " failed at ", __FILE__, ":", __LINE__, ": ",                    \
                    cudaGetErrorString(fireq_status_));                                     \
  } while (0)

// After a kernel launch: launch-configuration errors now, execution errors at the next sync.
#define FIREQ_CUDA_CHECK_LAUNCH() FIREQ_CUDA_CHECK(cudaGetLastError())
