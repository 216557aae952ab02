// The CPU engine on the real SmolLM2-135M (GGUF, loaded by fireq_model) against golden logits from
// Hugging Face transformers (tests/engine/golden/smollm2_135m.json, made by
// scripts/golden_logits.py; its command and versions are stored in the file).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "fireq/engine.h"
#include "fireq/model.h"
#include "fireq/sampling.h"
#ifdef FIREQ_HAVE_TOKENIZER
#include "fireq/tokenizer.h"
#endif

namespace fireq {
namespace {

const std::filesystem::path kSource = FIREQ_SOURCE_DIR;
const std::filesystem::path kModel = kSource / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::filesystem::path kGolden = kSource / "tests/engine/golden/smollm2_135m.json";

// FP32 against FP32 with other summation orders (and transformers' own GGUF dequantization).
// Measured 5.4e-5 with transformers 5.24 / torch 2.15 (logits up to ~40, so ~1.5e-6 relative);
// the bound leaves room for other BLAS builds.
constexpr double kMaxLogitDiff = 1e-3;

class RealModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kModel)) return;
    weights_ = new LlamaWeights(load_llama_weights(kModel));
    std::ifstream in(kGolden);
    golden_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete golden_;
    weights_ = nullptr;
    golden_ = nullptr;
  }
  void SetUp() override {
    if (!weights_) GTEST_SKIP() << kModel << " not present (run scripts/setup.sh)";
  }
  static std::vector<int32_t> ids(const nlohmann::json& prompt) {
    return prompt["token_ids"].get<std::vector<int32_t>>();
  }
  static const nlohmann::json& prompt(const std::string& name) {
    for (const auto& p : (*golden_)["prompts"])
      if (p["name"] == name) return p;
    throw std::runtime_error("no golden prompt " + name);
  }
  static LlamaWeights* weights_;
  static nlohmann::json* golden_;
};
LlamaWeights* RealModel::weights_ = nullptr;
nlohmann::json* RealModel::golden_ = nullptr;

TEST_F(RealModel, LogitsMatchTransformers) {
  ASSERT_EQ((*golden_)["vocab_size"].get<int>(), weights_->config.vocab_size);
  const auto spread_ids = (*golden_)["spread_ids"].get<std::vector<int>>();
  const int vocab = weights_->config.vocab_size;
  CpuEngine engine(*weights_);
  double worst = 0, worst_lse = 0, largest = 0;
  int compared = 0;
  for (const auto& p : (*golden_)["prompts"]) {
    engine.reset();
    const auto logits = engine.forward(ids(p), LogitsFor::kAll);
    for (const auto& pos : p["positions"]) {
      const std::span<const float> row(logits.data() + pos["position"].get<size_t>() * vocab, vocab);
      const auto top_ids = pos["top_ids"].get<std::vector<int>>();
      const auto top_logits = pos["top_logits"].get<std::vector<double>>();
      const auto spread = pos["spread_logits"].get<std::vector<double>>();
      EXPECT_EQ(argmax(row), top_ids[0]) << p["name"] << " position " << pos["position"];
      for (size_t i = 0; i < top_ids.size(); ++i) {
        worst = std::max(worst, std::abs(row[top_ids[i]] - top_logits[i]));
        largest = std::max(largest, std::abs(top_logits[i]));
      }
      for (size_t i = 0; i < spread_ids.size(); ++i)
        worst = std::max(worst, std::abs(row[spread_ids[i]] - spread[i]));
      double max = row[0], sum = 0;
      for (float x : row) max = std::max<double>(max, x);
      for (float x : row) sum += std::exp(x - max);
      worst_lse = std::max(worst_lse, std::abs(std::log(sum) + max - pos["logsumexp"].get<double>()));
      compared += top_ids.size() + spread_ids.size();
    }
  }
  std::printf("  %d logits compared with transformers %s: max |diff| %.2e (largest |logit| %.1f), "
              "max logsumexp diff %.2e\n", compared,
              (*golden_)["versions"]["transformers"].get<std::string>().c_str(), worst, largest, worst_lse);
  EXPECT_LT(worst, kMaxLogitDiff);
  EXPECT_LT(worst_lse, kMaxLogitDiff);
}

TEST_F(RealModel, IncrementalDecodeMatchesPrefill) {
  const auto tokens = ids(prompt("long"));
  const int vocab = weights_->config.vocab_size, prefix = static_cast<int>(tokens.size()) - 12;
  CpuEngine engine(*weights_);
  const auto full = engine.forward(tokens, LogitsFor::kAll);
  engine.reset();
  engine.forward(std::span(tokens).first(prefix), LogitsFor::kNone);
  double worst = 0;
  for (size_t t = prefix; t < tokens.size(); ++t) {
    const auto step = engine.forward(std::span(tokens).subspan(t, 1), LogitsFor::kLast);
    for (int k = 0; k < vocab; ++k) worst = std::max(worst, std::abs(static_cast<double>(step[k]) - full[t * vocab + k]));
  }
  std::printf("  decode vs prefill over 12 steps after %d tokens: max |diff| %.2e\n", prefix, worst);
  EXPECT_LT(worst, 1e-3);
}

TEST_F(RealModel, GreedyContinuationIsParis) {
  const auto& p = prompt("capital");
  const auto expected = p["greedy_ids"].get<std::vector<int32_t>>();
  CpuEngine engine(*weights_);
  std::vector<int32_t> generated;
  auto logits = engine.forward(ids(p), LogitsFor::kLast);
  for (size_t i = 0; i < expected.size(); ++i) {
    generated.push_back(argmax(logits));
    logits = engine.forward(std::span(&generated.back(), 1), LogitsFor::kLast);
  }
  EXPECT_EQ(generated, expected) << "transformers: " << p["greedy_text"];
}

#ifdef FIREQ_HAVE_TOKENIZER
// The first window of the default perplexity slice (tokenizer + engine + NLL) against
// transformers' mean NLL of the same window.
TEST_F(RealModel, PerplexityWindowMatchesTransformers) {
  if (!golden_->contains("perplexity")) GTEST_SKIP() << "golden file has no perplexity entry";
  const auto& reference = (*golden_)["perplexity"];
  const std::filesystem::path text_path = kSource / reference["text"].get<std::string>();
  if (!std::filesystem::exists(text_path)) GTEST_SKIP() << text_path << " not present (run scripts/setup.sh)";
  std::ifstream in(text_path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto tokens = load_tokenizer(kModel)->encode(text, false);
  ASSERT_EQ(tokens.size(), reference["tokens"].get<size_t>()) << text_path << " differs from the golden run's";
  CpuEngine engine(*weights_);
  const int seq_len = reference["seq_len"];
  const auto result = evaluate_perplexity(engine, tokens, {.seq_len = seq_len, .max_windows = 1});
  const double expected = reference["window_mean_nll"][0];
  std::printf("  window 1 of %s: mean NLL %.6f, transformers %.6f\n", text_path.filename().c_str(),
              result.mean_nll, expected);
  EXPECT_NEAR(result.mean_nll, expected, 1e-4);
}

// Our tokenizer gives transformers' ids for every golden prompt, and the greedy token reads " Paris".
TEST_F(RealModel, TokenizerAgreesWithGolden) {
  const auto tokenizer = load_tokenizer(kModel);
  for (const auto& p : (*golden_)["prompts"])
    EXPECT_EQ(tokenizer->encode(p["text"].get<std::string>(), false), ids(p)) << p["name"];
  const int32_t first = prompt("capital")["greedy_ids"][0];
  EXPECT_EQ(tokenizer->decode(std::span(&first, 1)), " Paris");
}
#endif

}  // namespace
}  // namespace fireq
