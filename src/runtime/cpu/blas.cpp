// OpenBLAS threading and a measurement of the machine's sgemm peak.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "fireq/engine.h"
#include "fireq/error.h"

namespace fireq {

void set_blas_threads(int threads) {
  if (threads < 1) fail("threads must be at least 1, got ", threads);
  openblas_set_num_threads(threads);
}

int blas_threads() { return openblas_get_num_threads(); }

double measure_sgemm_peak_gflops(int n, int repeats) {
  std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : a) x = uniform(rng);
  for (float& x : b) x = uniform(rng);
  double best = 1e30;
  for (int i = 0; i <= repeats; ++i) {  // the first run warms up and is not counted
    const auto start = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0) best = std::min(best, seconds);
  }
  return 2.0 * n * n * static_cast<double>(n) / best * 1e-9;
}

}  // namespace fireq
