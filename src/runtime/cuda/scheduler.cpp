// Continuous batching with chunked prefill over a BatchEngine (cuda_engine.h).
#include <algorithm>

#include "fireq/cuda_engine.h"
#include "fireq/error.h"

namespace fireq {

Scheduler::Scheduler(BatchEngine& engine, const SchedulerOptions& options) : engine_(engine), options_(options) {
  if (options.prefill_chunk < 1) fail("scheduler: prefill_chunk must be positive, got ", options.prefill_chunk);
}

int64_t Scheduler::pages(int64_t tokens) const { return (tokens + engine_.page_size() - 1) / engine_.page_size(); }

int64_t Scheduler::promised_pages() const {
  int64_t promised = 0;
  for (const auto& a : running_) promised += a->reserved_pages - pages(engine_.sequence_length(a->sequence));
  return promised;
}

int Scheduler::submit(GenerationRequest request) {
  const int id = next_id_;
  if (request.prompt.empty()) fail("scheduler: request ", id, " has an empty prompt");
  if (request.max_new_tokens < 1)
    fail("scheduler: request ", id, ": max_new_tokens must be at least 1, got ", request.max_new_tokens);
  // The cache holds at most the prompt and every generated token but the last (never fed back).
  const int64_t longest = static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens - 1;
  if (longest > engine_.max_context())
    fail("scheduler: request ", id, ": prompt ", request.prompt.size(), " + max_new_tokens ", request.max_new_tokens,
         " tokens exceed the context of ", engine_.max_context());
  if (pages(longest) * engine_.page_size() > engine_.kv_capacity_tokens())
    fail("scheduler: request ", id, " needs ", pages(longest) * engine_.page_size(), " KV tokens, the whole pool holds ",
         engine_.kv_capacity_tokens());
  auto active = std::make_unique<Active>();
  active->request = std::move(request);
  active->id = id;
  active->reserved_pages = pages(longest);
  waiting_.push_back(std::move(active));
  ++next_id_;
  return id;
}

bool Scheduler::admit_front() {
  Active& a = *waiting_.front();
  const int64_t free_pages = engine_.free_kv_tokens() / engine_.page_size();
  if (a.reserved_pages > free_pages - promised_pages()) return false;
  const int sequence = engine_.add_sequence();
  if (sequence < 0) return false;
  engine_.set_sampling(sequence, a.request.sampling);
  a.sequence = sequence;
  running_.push_back(std::move(waiting_.front()));
  waiting_.erase(waiting_.begin());
  return true;
}

std::vector<GeneratedToken> Scheduler::step() {
  std::vector<BatchEngine::Chunk> chunks;
  std::vector<uint8_t> draw;         // 1: the chunk's last token is followed by a new token
  std::vector<Active*> owners;
  std::vector<int> prompt_tokens;    // prompt tokens each chunk moves into the cache
  int budget = engine_.max_step_tokens();
  auto add = [&](Active& a, std::span<const int32_t> tokens, bool draws, int from_prompt) {
    chunks.push_back({a.sequence, tokens});
    draw.push_back(draws);
    owners.push_back(&a);
    prompt_tokens.push_back(from_prompt);
    budget -= static_cast<int>(tokens.size());
  };
  auto add_prefill = [&](Active& a) {
    const int size = static_cast<int>(a.request.prompt.size());
    const int n = std::min({size - a.prefilled, options_.prefill_chunk, budget});
    if (n > 0) add(a, std::span(a.request.prompt).subspan(a.prefilled, n), a.prefilled + n == size, n);
  };
  for (const auto& a : running_)  // decode first: a running request gets its token every step
    if (a->prefilled == static_cast<int>(a->request.prompt.size()) && budget > 0)
      add(*a, std::span(&a->next_token, 1), true, 0);
  for (const auto& a : running_)
    if (a->prefilled < static_cast<int>(a->request.prompt.size())) add_prefill(*a);
  while (!waiting_.empty() && budget > 0 && admit_front()) add_prefill(*running_.back());
  if (chunks.empty()) return {};

  engine_.step(chunks);
  const std::vector<int32_t> tokens = engine_.sample(draw);
  std::vector<GeneratedToken> out;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Active& a = *owners[i];
    a.prefilled += prompt_tokens[i];
    if (!draw[i]) continue;
    a.next_token = tokens[i];
    ++a.generated;
    const std::vector<int32_t>& stops = a.request.stop_tokens;
    const bool last = a.generated == a.request.max_new_tokens ||
                      std::find(stops.begin(), stops.end(), tokens[i]) != stops.end();
    out.push_back({a.id, tokens[i], last});
    if (last) {
      engine_.release_sequence(a.sequence);
      a.sequence = -1;
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Active>& a) { return a->sequence < 0; });
  return out;
}

}  // namespace fireq
