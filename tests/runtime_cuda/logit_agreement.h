// How far one engine's logits are from another's (the CUDA engine's tests and the real-model check
// bench/e2e/fireq_check.cpp): max and RMS differences over all logits, top-1 agreement per row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

namespace fireq::testing {

struct LogitAgreement {
  double max_abs_diff = 0, max_abs_ref = 0, sum_sq_diff = 0, sum_sq_ref = 0;
  int64_t top1_same = 0, rows = 0, non_finite = 0;
  double relative_rms() const { return std::sqrt(sum_sq_diff / sum_sq_ref); }
  double top1() const { return static_cast<double>(top1_same) / static_cast<double>(rows); }
};

// Rows of `vocab` logits; `got` values that are not finite count as an infinite difference.
inline LogitAgreement compare_logits(std::span<const float> got, std::span<const float> ref, int vocab) {
  LogitAgreement a;
  a.rows = static_cast<int64_t>(std::min(got.size(), ref.size()) / vocab);
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* g = got.data() + r * vocab;
    const float* c = ref.data() + r * vocab;
    for (int i = 0; i < vocab; ++i) {
      const bool finite = std::isfinite(g[i]);
      a.non_finite += !finite;
      const double d = finite ? std::fabs(double(g[i]) - c[i]) : std::numeric_limits<double>::infinity();
      a.max_abs_diff = std::max(a.max_abs_diff, d);
      a.max_abs_ref = std::max(a.max_abs_ref, std::fabs(double(c[i])));
      a.sum_sq_diff += d * d;
      a.sum_sq_ref += double(c[i]) * c[i];
    }
    a.top1_same += std::max_element(g, g + vocab) - g == std::max_element(c, c + vocab) - c;
  }
  return a;
}

}  // namespace fireq::testing
