// Sampling: greedy, temperature, top-k, top-p frequencies against the exact distributions, seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fireq/error.h"
#include "fireq/sampling.h"

namespace fireq {
namespace {

std::vector<float> random_logits(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(n);
  for (float& x : logits) x = normal(rng);
  return logits;
}

// Frequencies of `draws` samples, one sampler (so its generator advances).
std::vector<double> frequencies(const SamplingOptions& options, const std::vector<float>& logits,
                                int draws) {
  Sampler sampler(options);
  std::vector<double> f(logits.size());
  for (int i = 0; i < draws; ++i) f[sampler.sample(logits)] += 1.0 / draws;
  return f;
}

TEST(Sampling, GreedyIsArgmax) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto logits = random_logits(1000, seed);
    const int32_t best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(argmax(logits), best);
    Sampler greedy({.temperature = 0.0, .seed = seed});
    EXPECT_EQ(greedy.sample(logits), best);
    Sampler top1({.temperature = 1.5, .top_k = 1, .seed = seed});
    EXPECT_EQ(top1.sample(logits), best);
  }
}

TEST(Sampling, SameSeedSameTokens) {
  const auto logits = random_logits(5000, 3);
  const SamplingOptions options{.temperature = 0.9, .top_k = 50, .top_p = 0.95, .seed = 1234};
  Sampler a(options), b(options), other({.temperature = 0.9, .top_k = 50, .top_p = 0.95, .seed = 99});
  int differences = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    differences += x != other.sample(logits);
  }
  EXPECT_GT(differences, 20);
}

// Exact probabilities p_i ∝ exp(l_i / T) over the allowed set.
void expect_distribution(const SamplingOptions& options, const std::vector<float>& logits,
                         const std::vector<int>& allowed) {
  std::vector<double> expected(logits.size(), 0.0);
  double total = 0;
  for (int i : allowed) total += expected[i] = std::exp(logits[i] / options.temperature);
  for (double& p : expected) p /= total;
  const int draws = 40000;
  const auto seen = frequencies(options, logits, draws);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double sigma = std::sqrt(expected[i] * (1 - expected[i]) / draws);
    EXPECT_NEAR(seen[i], expected[i], 5 * sigma + 1e-9) << "token " << i;
  }
}

TEST(Sampling, TemperatureFollowsSoftmax) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  expect_distribution({.temperature = 1.0, .seed = 1}, logits, {0, 1, 2, 3});
  expect_distribution({.temperature = 0.5, .seed = 2}, logits, {0, 1, 2, 3});
  expect_distribution({.temperature = 2.0, .seed = 3}, logits, {0, 1, 2, 3});
}

TEST(Sampling, TopKAndTopPRestrictTheCandidates) {
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  expect_distribution({.temperature = 1.0, .top_k = 2, .seed = 4}, logits, {1, 3});
  // Cumulative 0.5, 0.8, 0.95: top-p 0.6 keeps the first two, top-p 0.9 the first three.
  expect_distribution({.temperature = 1.0, .top_p = 0.6, .seed = 5}, logits, {1, 3});
  expect_distribution({.temperature = 1.0, .top_p = 0.9, .seed = 6}, logits, {1, 3, 0});
  expect_distribution({.temperature = 1.0, .top_k = 3, .top_p = 0.9, .seed = 7}, logits, {1, 3, 0});
  // A tiny top-p still keeps the most likely token.
  expect_distribution({.temperature = 1.0, .top_p = 0.01, .seed = 8}, logits, {1});
}

TEST(Sampling, BadOptionsAndLogitsThrow) {
  EXPECT_THROW(Sampler({.temperature = -1.0}), Error);
  EXPECT_THROW(Sampler({.temperature = 1.0, .top_k = -2}), Error);
  EXPECT_THROW(Sampler({.temperature = 1.0, .top_p = 0.0}), Error);
  EXPECT_THROW(Sampler({.temperature = 1.0, .top_p = 1.5}), Error);
  Sampler sampler({.temperature = 1.0});
  EXPECT_THROW(sampler.sample(std::vector<float>{}), Error);
  EXPECT_THROW(sampler.sample(std::vector<float>{1.0f, std::nanf("")}), Error);
}

}  // namespace
}  // namespace fireq
