// WikiText-style perplexity over non-overlapping windows (see engine.h).
#include <algorithm>
#include <chrono>
#include <cmath>

#include "fireq/engine.h"
#include "fireq/error.h"

namespace fireq {

double token_nll(std::span<const float> logits, int32_t target) {
  if (target < 0 || static_cast<size_t>(target) >= logits.size())
    fail("perplexity: target token ", target, " outside the vocabulary of ", logits.size());
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l - max));
  return std::log(sum) + max - logits[target];
}

PerplexityResult evaluate_perplexity(Engine& engine, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options,
                                     const std::function<void(const PerplexityProgress&)>& progress) {
  if (options.seq_len < 2) fail("perplexity: seq-len must be at least 2, got ", options.seq_len);
  if (options.seq_len > engine.max_context())
    fail("perplexity: seq-len ", options.seq_len, " exceeds the model's context of ",
         engine.max_context());
  if (options.chunk < 1) fail("perplexity: chunk must be positive, got ", options.chunk);
  if (options.max_windows < 0) fail("perplexity: max-windows must be >= 0, got ", options.max_windows);
  int windows = static_cast<int>(tokens.size() / options.seq_len);
  if (windows == 0)
    fail("perplexity: the text has ", tokens.size(), " tokens, fewer than one window of ",
         options.seq_len);
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);

  const int vocab = engine.config().vocab_size;
  const auto start = std::chrono::steady_clock::now();
  PerplexityResult result;
  double nll_sum = 0;
  for (int w = 0; w < windows; ++w) {
    const auto window = tokens.subspan(static_cast<size_t>(w) * options.seq_len, options.seq_len);
    engine.reset();
    double window_sum = 0;
    for (int c = 0; c < options.seq_len; c += options.chunk) {
      const int m = std::min(options.chunk, options.seq_len - c);
      const std::vector<float> logits = engine.forward(window.subspan(c, m), LogitsFor::kAll);
      for (int r = 0; r < m && c + r + 1 < options.seq_len; ++r)
        window_sum += token_nll(std::span(logits).subspan(static_cast<size_t>(r) * vocab, vocab),
                                window[c + r + 1]);
    }
    nll_sum += window_sum;
    result.windows = w + 1;
    result.predicted_tokens += options.seq_len - 1;
    result.processed_tokens += options.seq_len;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (progress) {
      progress({.window = w + 1,
                .windows = windows,
                .window_nll = window_sum / (options.seq_len - 1),
                .running_nll = nll_sum / result.predicted_tokens,
                .tokens_done = result.processed_tokens,
                .seconds = result.seconds});
    }
  }
  engine.reset();
  result.mean_nll = nll_sum / result.predicted_tokens;
  result.perplexity = std::exp(result.mean_nll);
  return result;
}

}  // namespace fireq
