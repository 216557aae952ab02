// Our ids against the Python reference packages: `tokenizers` for the byte-level BPE tokenizers
// (SmolLM2's, rebuilt from its GGUF metadata, and a Llama-3-style one trained at test time),
// `sentencepiece` for a SentencePiece BPE model with byte fallback trained at test time.
// scripts/tokenizer_reference.py builds the tokenizers and writes the reference ids.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "fireq/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path source_dir() {
  const char* env = std::getenv("FIREQ_SOURCE_DIR");
  return env ? fs::path(env) : fs::path(FIREQ_SOURCE_DIR);
}

struct Reference {
  fs::path dir;
  json tokenizer;  // {"name", "path", "reference", "cases": [{"label", "text", "ids"}], ...}
};

// How many random strings the script adds to the fixed corpus: 300, or
// FIREQ_TOKENIZER_RANDOM_STRINGS for a longer search.
long random_strings() {
  const char* env = std::getenv("FIREQ_TOKENIZER_RANDOM_STRINGS");
  return env ? std::atol(env) : 300;
}

// Runs the reference script for one tokenizer; an empty optional means "skip" (no .venv).
// `seed` picks the random strings.
std::optional<Reference> make_reference(const std::string& name, long wiki_chars, unsigned seed) {
  const fs::path python = source_dir() / ".venv/bin/python";
  if (!fs::exists(python)) return std::nullopt;
  const fs::path dir = fs::temp_directory_path() /
                       ("fireq_tokenizer_reference_" + name + "_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string command = python.string() + " " +
                              (source_dir() / "scripts/tokenizer_reference.py").string() + " " +
                              dir.string() + " --only " + name + " --wiki-chars " +
                              std::to_string(wiki_chars) + " --seed " + std::to_string(seed) +
                              " --random-strings " + std::to_string(random_strings()) +
                              " > " + (dir / "log.txt").string() +
                              " 2>&1";
  if (std::system(command.c_str()) != 0) {
    std::ifstream log(dir / "log.txt");
    std::stringstream text;
    text << log.rdbuf();
    ADD_FAILURE() << "reference script failed: " << command << "\n" << text.str();
    return Reference{};
  }
  std::ifstream in(dir / "cases.json");
  const json cases = json::parse(in);
  return Reference{dir, cases.at("tokenizers").at(0)};
}

std::string shown(const std::string& text) {
  return text.size() <= 80 ? text : text.substr(0, 80) + "...";
}

struct Counts {
  size_t strings = 0;
  size_t tokens = 0;
  size_t lossy = 0;  // strings that neither side can reproduce from their ids
};

// Compares every case's ids (the reference named `key`), the round trip and streaming pieces.
Counts compare_cases(const fireq::Tokenizer& tokenizer, const json& cases, const std::string& key) {
  Counts counts;
  for (const json& c : cases) {
    const std::string label = c.at("label");
    const std::string text = c.at("text");
    const auto expected = c.at(key).get<std::vector<int32_t>>();
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer.encode(text, false);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (text.size() > 100000) {
      std::printf("  %s: %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", label.c_str(),
                  text.size(), ids.size(), seconds, text.size() / seconds / 1e6);
    }
    EXPECT_EQ(ids, expected) << label << ": " << shown(text);
    if (ids != expected) {
      for (size_t i = 0; i < std::min(ids.size(), expected.size()); ++i) {
        if (ids[i] == expected[i]) continue;
        ADD_FAILURE() << label << ": first difference at token " << i << ": ours " << ids[i]
                      << " ('" << tokenizer.token_to_piece(ids[i]) << "'), reference "
                      << expected[i] << " ('" << tokenizer.token_to_piece(expected[i]) << "')";
        break;
      }
    }
    // The text itself, unless the reference cannot reproduce it either (SmolLM2's vocabulary
    // lacks 21 of the 256 bytes, e.g. 0x1D: such bytes are dropped).
    const std::string decoded = c.value(key + "_decoded", text);
    EXPECT_EQ(tokenizer.decode(ids), decoded) << label;
    // Stream as a chat front end would: print only whole UTF-8 characters, hold the rest. The
    // pieces are the decoded text, less the SentencePiece prefix space that decode() drops.
    std::string streamed;
    std::string pending;
    for (const int32_t id : ids) {
      pending += tokenizer.token_to_piece(id);
      const size_t printable = fireq::complete_utf8_prefix(pending);
      streamed.append(pending, 0, printable);
      pending.erase(0, printable);
    }
    streamed += pending;
    if (streamed != decoded && streamed.starts_with(' ')) streamed.erase(0, 1);
    EXPECT_EQ(streamed, decoded) << label;
    counts.lossy += decoded != text;
    counts.tokens += expected.size();
    ++counts.strings;
  }
  return counts;
}

class TokenizerReference : public ::testing::Test {
 protected:
  void run(const std::string& name, long wiki_chars) {
    const unsigned seed = std::random_device{}() % 1000000;
    SCOPED_TRACE("random strings seed " + std::to_string(seed));
    const std::optional<Reference> reference = make_reference(name, wiki_chars, seed);
    if (!reference) GTEST_SKIP() << ".venv is absent (run scripts/setup.sh): no reference ids";
    if (reference->dir.empty()) return;  // the failure is already reported
    const json& entry = reference->tokenizer;
    for (const json& load : entry.at("loads")) {
      const std::string path = load.at("path");
      SCOPED_TRACE(path);
      const auto tokenizer = fireq::load_tokenizer(reference->dir / path);  // absolute stays
      const Counts counts = compare_cases(*tokenizer, entry.at("cases"), load.at("ids"));
      std::printf("%s (%s): %zu strings, %zu tokens compared with %s; %zu strings do not "
                  "round-trip in either\n", name.c_str(), fs::path(path).filename().c_str(),
                  counts.strings, counts.tokens, load.at("reference").get<std::string>().c_str(),
                  counts.lossy);
      EXPECT_EQ(tokenizer->bos_id(), load.at("bos_id").get<int32_t>());
      EXPECT_EQ(tokenizer->eos_id(), load.at("eos_id").get<int32_t>());
      EXPECT_EQ(tokenizer->add_bos_by_default(), load.at("add_bos").get<bool>());
      if (load.contains("bos_ids")) {
        EXPECT_EQ(tokenizer->encode("Hi", true), load["bos_ids"].get<std::vector<int32_t>>());
      }
    }
    fs::remove_all(reference->dir);
  }
};

// Every code point's \p{L} / \p{N} class in our generated tables is the one tokenizers' regex
// engine (Oniguruma, Unicode 16.0) gives it.
TEST(TokenizerUnicodeTables, MatchTokenizersForEveryCodePoint) {
  const fs::path python = source_dir() / ".venv/bin/python";
  if (!fs::exists(python)) GTEST_SKIP() << ".venv is absent (run scripts/setup.sh)";
  const std::string command = python.string() + " " +
                              (source_dir() / "scripts/tokenizer_unicode_tables.py").string() +
                              " --check";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

TEST_F(TokenizerReference, SmolLM2FromGgufMetadataMatchesTokenizers) {
  run("smollm2", -1);  // the whole Wikipedia dump: 6 M characters
}

TEST_F(TokenizerReference, Llama3StyleTrainedMatchesTokenizers) {
  run("llama3_style", 1000000);
}

// The .model and a GGUF holding it against sentencepiece; its tokenizer.json conversions
// (as Hugging Face converts Llama-2's) against tokenizers.
TEST_F(TokenizerReference, SentencePieceBpeByteFallbackMatchesSentencePiece) {
  run("spm", 1000000);
}

}  // namespace
