// Next-token sampling from logits: greedy, temperature, top-k, top-p (nucleus), seeded.
// The same seed and logits always give the same tokens (the generator is ours, not the
// standard library's distribution, so the sequence does not depend on the platform).
#pragma once

#include <cstdint>
#include <span>

namespace fireq {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax; ties go to the lowest id)
  int top_k = 0;             // 0: no top-k limit
  double top_p = 1.0;        // 1: no nucleus limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);  // validates the options
  int32_t sample(std::span<const float> logits);
  const SamplingOptions& options() const { return options_; }

 private:
  double next_uniform();  // in [0, 1)
  SamplingOptions options_;
  uint64_t state_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace fireq
