// The one timing method of the device benchmarks: capture a batch of launches in a CUDA graph,
// replay it 11 times between CUDA events, report the median per call (launch gaps removed).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "fireq/cuda_check.h"

namespace fireq::bench {

// Median µs per call of `body`, which issues `calls_per_graph` calls on `stream`. body() runs once
// first, outside the graph, as the warm-up.
template <typename Body>
double graph_median_us(Body&& body, int calls_per_graph, cudaStream_t stream) {
  body();
  FIREQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  FIREQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  body();
  FIREQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  FIREQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  FIREQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  cudaEvent_t start, stop;
  FIREQ_CUDA_CHECK(cudaEventCreate(&start));
  FIREQ_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < 11; ++i) {
    FIREQ_CUDA_CHECK(cudaEventRecord(start, stream));
    FIREQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    FIREQ_CUDA_CHECK(cudaEventRecord(stop, stream));
    FIREQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    FIREQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e3 / calls_per_graph);
  }
  FIREQ_CUDA_CHECK(cudaEventDestroy(start));
  FIREQ_CUDA_CHECK(cudaEventDestroy(stop));
  FIREQ_CUDA_CHECK(cudaGraphExecDestroy(exec));
  FIREQ_CUDA_CHECK(cudaGraphDestroy(graph));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace fireq::bench
