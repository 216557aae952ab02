// The scheduler (continuous batching, chunked prefill, KV admission) over a fake BatchEngine whose
// "model" is a hash of each sequence's history, so every request's tokens can be computed alone
// and compared; the fake checks every step against the engine's limits. No GPU needed.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "fireq/cuda_engine.h"
#include "fireq/error.h"

namespace fireq {
namespace {

constexpr int kVocab = 1000;

int32_t next_of(const std::vector<int32_t>& history) {  // the fake model
  uint64_t h = 1469598103934665603ull;
  for (const int32_t t : history) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return static_cast<int32_t>(h % kVocab);
}

class FakeEngine final : public BatchEngine {
 public:
  FakeEngine(int max_context, int step_tokens, int sequences, int page_size, int pool_pages)
      : max_context_(max_context), step_tokens_(step_tokens), sequences_(sequences), page_size_(page_size),
        free_pages_(pool_pages), capacity_pages_(pool_pages) {}

  int max_context() const override { return max_context_; }
  int add_sequence() override {
    if (static_cast<int>(alive_.size()) == sequences_) return -1;
    const int id = next_sequence_++;
    alive_[id] = {};
    return id;
  }
  void release_sequence(int s) override {
    free_pages_ += pages(alive_.at(s).history.size());
    alive_.erase(s);
  }
  int sequence_length(int s) const override { return static_cast<int>(alive_.at(s).history.size()); }
  int64_t free_kv_tokens() const override { return int64_t{free_pages_} * page_size_; }
  int max_step_tokens() const override { return step_tokens_; }
  int page_size() const override { return page_size_; }
  int64_t kv_capacity_tokens() const override { return int64_t{capacity_pages_} * page_size_; }

  void step(std::span<const Chunk> chunks) override {
    int tokens = 0;
    std::set<int> seen;
    last_.clear();
    for (const Chunk& c : chunks) {
      Sequence& s = alive_.at(c.sequence);
      if (!seen.insert(c.sequence).second) fail("fake engine: sequence twice in a step");
      const int before = pages(s.history.size());
      s.history.insert(s.history.end(), c.tokens.begin(), c.tokens.end());
      if (static_cast<int>(s.history.size()) > max_context_) fail("fake engine: context exceeded");
      free_pages_ -= pages(s.history.size()) - before;
      if (free_pages_ < 0) fail("fake engine: KV pool exhausted");
      tokens += static_cast<int>(c.tokens.size());
      last_.push_back(c.sequence);
    }
    if (tokens > step_tokens_) fail("fake engine: ", tokens, " tokens in one step");
    step_sizes.push_back(tokens);
  }
  std::vector<int32_t> sample(std::span<const uint8_t> draw) override {
    std::vector<int32_t> out;
    for (size_t i = 0; i < last_.size(); ++i) {
      Sequence& s = alive_.at(last_[i]);
      if (draw.empty() || draw[i]) ++s.draws;
      out.push_back(next_of(s.history));
    }
    return out;
  }
  void set_sampling(int s, const SamplingOptions&) override { alive_.at(s).draws = 0; }

  std::vector<int> step_sizes;
  int draws_of(int s) const { return alive_.at(s).draws; }

 private:
  struct Sequence {
    std::vector<int32_t> history;
    int draws = 0;
  };
  int pages(size_t tokens) const { return static_cast<int>((tokens + page_size_ - 1) / page_size_); }
  int max_context_, step_tokens_, sequences_, page_size_, free_pages_, capacity_pages_;
  int next_sequence_ = 0;
  std::map<int, Sequence> alive_;
  std::vector<int> last_;
};

// What one request generates alone.
std::vector<int32_t> solo(const GenerationRequest& r) {
  std::vector<int32_t> history = r.prompt, out;
  for (int i = 0; i < r.max_new_tokens; ++i) {
    out.push_back(next_of(history));
    history.push_back(out.back());
    if (std::find(r.stop_tokens.begin(), r.stop_tokens.end(), out.back()) != r.stop_tokens.end()) break;
  }
  return out;
}

GenerationRequest random_request(std::mt19937& rng, int max_prompt, int max_new) {
  GenerationRequest r;
  r.prompt.resize(std::uniform_int_distribution<int>(1, max_prompt)(rng));
  for (int32_t& t : r.prompt) t = std::uniform_int_distribution<int32_t>(0, kVocab - 1)(rng);
  r.max_new_tokens = std::uniform_int_distribution<int>(1, max_new)(rng);
  return r;
}

// Runs every request to the end; returns each request's tokens.
std::map<int, std::vector<int32_t>> drain(Scheduler& scheduler, int max_steps) {
  std::map<int, std::vector<int32_t>> out;
  std::set<int> finished;
  for (int i = 0; i < max_steps && !scheduler.idle(); ++i)
    for (const GeneratedToken& g : scheduler.step()) {
      EXPECT_FALSE(finished.count(g.request)) << "token after the end of request " << g.request;
      out[g.request].push_back(g.token);
      if (g.last) finished.insert(g.request);
    }
  EXPECT_TRUE(scheduler.idle());
  return out;
}

TEST(Scheduler, ManyRequestsMatchTheirSoloRuns) {
  std::mt19937 rng(7);
  FakeEngine engine(512, 64, 8, 16, 200);
  Scheduler scheduler(engine, {.prefill_chunk = 24});
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 40; ++i) requests.push_back(random_request(rng, 300, 30));
  for (const GenerationRequest& r : requests) scheduler.submit(r);
  const auto out = drain(scheduler, 100000);
  ASSERT_EQ(out.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(out.at(static_cast<int>(i)), solo(requests[i])) << i;
  for (const int n : engine.step_sizes) EXPECT_LE(n, 64);
  EXPECT_EQ(engine.free_kv_tokens(), 200 * 16);  // every page back
}

TEST(Scheduler, StopTokensEndEarlyAndRequestsJoinLater) {
  std::mt19937 rng(8);
  FakeEngine engine(256, 32, 4, 16, 64);
  Scheduler scheduler(engine);
  GenerationRequest first = random_request(rng, 40, 1);
  first.max_new_tokens = 50;
  const std::vector<int32_t> free_run = solo(first);
  size_t stop_at = 3;  // the first token from the fourth on that did not come earlier
  while (std::find(free_run.begin(), free_run.begin() + stop_at, free_run[stop_at]) != free_run.begin() + stop_at)
    ++stop_at;
  first.stop_tokens = {free_run[stop_at]};
  const int a = scheduler.submit(first);
  std::map<int, std::vector<int32_t>> out;
  for (int i = 0; i < 3; ++i)
    for (const GeneratedToken& g : scheduler.step()) out[g.request].push_back(g.token);
  GenerationRequest second = random_request(rng, 40, 10);  // joins while the first decodes
  const int b = scheduler.submit(second);
  for (const auto& [id, tokens] : drain(scheduler, 1000)) out[id].insert(out[id].end(), tokens.begin(), tokens.end());
  EXPECT_EQ(out[a], std::vector<int32_t>(free_run.begin(), free_run.begin() + stop_at + 1));
  EXPECT_EQ(out[b], solo(second));
}

TEST(Scheduler, WaitsForKvAndRefusesWhatNeverFits) {
  std::mt19937 rng(9);
  FakeEngine engine(1024, 256, 8, 16, 20);  // 320 KV tokens
  Scheduler scheduler(engine, {.prefill_chunk = 128});
  GenerationRequest big;
  big.prompt.assign(250, 5);
  big.max_new_tokens = 20;
  for (int i = 0; i < 3; ++i) scheduler.submit(big);  // 269 tokens each: one at a time fits
  scheduler.step();
  EXPECT_EQ(scheduler.running(), 1);
  EXPECT_EQ(scheduler.waiting(), 2);
  const auto out = drain(scheduler, 1000);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out.at(i), solo(big)) << i;

  GenerationRequest too_long;
  too_long.prompt.assign(400, 1);  // fits the context, not the pool
  too_long.max_new_tokens = 1;
  EXPECT_THROW(scheduler.submit(too_long), Error);
  too_long.prompt.assign(1000, 1);
  too_long.max_new_tokens = 30;  // past the context
  EXPECT_THROW(scheduler.submit(too_long), Error);
  EXPECT_THROW(scheduler.submit({}), Error);
  EXPECT_THROW(Scheduler(engine, {.prefill_chunk = 0}), Error);
}

TEST(Scheduler, PrefillChunksDoNotConsumeRandomDraws) {
  std::mt19937 rng(10);
  FakeEngine engine(512, 16, 2, 16, 64);
  Scheduler scheduler(engine, {.prefill_chunk = 8});
  GenerationRequest r = random_request(rng, 1, 1);
  r.prompt.assign(50, 3);  // 7 prefill chunks of 8, the last of 2
  r.max_new_tokens = 5;
  scheduler.submit(r);
  int steps = 0, generated = 0;
  while (generated < 1) {
    for (const GeneratedToken& g : scheduler.step()) generated += g.request == 0;
    ++steps;
  }
  EXPECT_EQ(steps, 7);
  EXPECT_EQ(engine.draws_of(0), 1);  // only the chunk that ended the prompt drew
}

}  // namespace
}  // namespace fireq
