// Greedy / temperature / top-k / top-p sampling with a private splitmix64 generator.
#include "fireq/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "fireq/error.h"

namespace fireq {
namespace {

void check_finite(std::span<const float> logits) {
  if (logits.empty()) fail("sampling: empty logits");
  for (size_t i = 0; i < logits.size(); ++i)
    if (std::isnan(logits[i])) fail("sampling: logit of token ", i, " is NaN");
}

}  // namespace

int32_t argmax(std::span<const float> logits) {
  check_finite(logits);
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), state_(options.seed) {
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature))
    fail("sampling: temperature must be >= 0, got ", options.temperature);
  if (options.top_k < 0) fail("sampling: top-k must be >= 0, got ", options.top_k);
  if (!(options.top_p > 0.0 && options.top_p <= 1.0))
    fail("sampling: top-p must be in (0, 1], got ", options.top_p);
}

double Sampler::next_uniform() {
  state_ += 0x9E3779B97F4A7C15ull;  // splitmix64
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (options_.temperature == 0.0) return argmax(logits);
  check_finite(logits);
  // Candidates by descending logit, ties by ascending id; only the top k need ordering.
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  const auto higher = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  size_t keep = ids.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < keep) {
    keep = options_.top_k;
    std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), higher);
  } else {
    std::sort(ids.begin(), ids.end(), higher);
  }
  std::vector<double> probs(keep);
  const double top = logits[ids[0]];
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] = std::exp((logits[ids[i]] - top) / options_.temperature);
    total += probs[i];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  if (options_.top_p < 1.0) {
    double cumulative = 0;
    size_t nucleus = 0;
    while (nucleus < keep && cumulative < options_.top_p * total) cumulative += probs[nucleus++];
    keep = std::max<size_t>(nucleus, 1);
    total = cumulative > 0 ? cumulative : probs[0];
  }
  double target = next_uniform() * total;
  for (size_t i = 0; i < keep; ++i) {
    target -= probs[i];
    if (target < 0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace fireq
