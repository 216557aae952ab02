// Unit tests: the hand-written pre-tokenizer matchers, the merge loop, UTF-8 handling, and the
// loaders' error messages. Ids against the Python packages are in test_tokenizer_reference.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "bpe_model.h"
#include "fireq/error.h"
#include "fireq/tokenizer.h"
#include "pretokenize.h"
#include "unicode.h"

namespace fs = std::filesystem;
using namespace fireq::tokenizer_detail;

namespace {

std::vector<std::string> split(SplitRegex regex, std::string_view text) {
  std::vector<std::string_view> pieces;
  split_by_regex(regex, text, pieces);
  return {pieces.begin(), pieces.end()};
}

using Pieces = std::vector<std::string>;

TEST(TokenizerPreTokenize, Llama3Regex) {
  EXPECT_EQ(split(SplitRegex::kLlama3, "Hello world's 1234567 x\n\n  y  "),
            (Pieces{"Hello", " world", "'s", " ", "123", "456", "7", " x", "\n\n", " ", " y", "  "}));
  EXPECT_EQ(split(SplitRegex::kLlama3, "I'LL ...\r\n$abc"),
            (Pieces{"I", "'LL", " ...\r\n", "$abc"}));
  EXPECT_EQ(split(SplitRegex::kLlama3, "a \t\n b"), (Pieces{"a", " \t\n", " b"}));
}

TEST(TokenizerPreTokenize, Gpt2Regex) {
  EXPECT_EQ(split(SplitRegex::kGpt2, "Hello  world's 12345 ?!x"),
            (Pieces{"Hello", " ", " world", "'s", " 12345", " ?!", "x"}));
  EXPECT_EQ(split(SplitRegex::kGpt2, "I'LL"), (Pieces{"I", "'", "LL"}));  // case-sensitive
}

TEST(TokenizerPreTokenize, Digits) {
  std::vector<std::string_view> pieces;
  split_digits("ab12 3x", true, pieces);
  EXPECT_EQ(Pieces(pieces.begin(), pieces.end()), (Pieces{"ab", "1", "2", " ", "3", "x"}));
  pieces.clear();
  split_digits("ab12 3x", false, pieces);
  EXPECT_EQ(Pieces(pieces.begin(), pieces.end()), (Pieces{"ab", "12", " ", "3", "x"}));
}

TEST(TokenizerPreTokenize, PiecesCoverRandomBytes) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text(1 + trial, '\0');
    for (char& c : text) c = static_cast<char>(byte(rng));
    for (const SplitRegex regex : {SplitRegex::kGpt2, SplitRegex::kLlama3, SplitRegex::kQwen2}) {
      std::string joined;
      for (const std::string& piece : split(regex, text)) {
        EXPECT_FALSE(piece.empty());
        joined += piece;
      }
      EXPECT_EQ(joined, text);
    }
  }
}

TEST(TokenizerUnicode, Classes) {
  EXPECT_TRUE(is_letter(U'é'));
  EXPECT_TRUE(is_letter(U'日'));
  EXPECT_TRUE(is_number(U'٣'));
  EXPECT_TRUE(is_number(U'Ⅻ'));
  EXPECT_FALSE(is_letter(U'1'));
  EXPECT_TRUE(is_whitespace(U'\u3000'));
  EXPECT_FALSE(is_whitespace(U'\u200b'));  // zero-width space is not White_Space
  EXPECT_EQ(decode_utf8("\xC0\xAF", 0).code_point, kInvalidCodePoint);  // overlong '/'
  EXPECT_EQ(decode_utf8("\xE2\x82", 0).length, 1u);                    // truncated
  EXPECT_EQ(decode_utf8("\xF0\x9F\x98\x80", 0).code_point, U'😀');
}

TEST(TokenizerUnicode, CompleteUtf8Prefix) {
  const std::string smile = "\xF0\x9F\x98\x80";
  for (size_t cut = 0; cut < smile.size(); ++cut) {
    EXPECT_EQ(fireq::complete_utf8_prefix("ab" + smile.substr(0, cut)), 2u) << cut;
  }
  EXPECT_EQ(fireq::complete_utf8_prefix("ab" + smile), 6u);
  EXPECT_EQ(fireq::complete_utf8_prefix(""), 0u);
}

// A vocabulary where the merge order matters: "abc" via (a b) then (ab c), and (b c) ranked
// lower, so "abc" must become [abc] while "bc" alone becomes [bc].
TEST(TokenizerBpe, MergeOrderAndIgnoreMerges) {
  const std::vector<std::pair<std::string, int32_t>> vocab = {
      {"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"cab", 6}};
  const std::vector<std::pair<std::string, std::string>> merges = {{"a", "b"}, {"b", "c"}, {"ab", "c"}};
  BpeModelOptions options;
  options.byte_level = true;
  const BpeModel model(vocab, merges, options, "test");
  auto encode = [&](std::string_view word) {
    std::vector<int32_t> ids;
    model.encode_word(word, ids);
    return ids;
  };
  EXPECT_EQ(encode("abc"), (std::vector<int32_t>{5}));
  EXPECT_EQ(encode("bc"), (std::vector<int32_t>{4}));
  EXPECT_EQ(encode("cab"), (std::vector<int32_t>{2, 3}));  // no merge makes "cab"
  EXPECT_EQ(encode("ababab"), (std::vector<int32_t>{3, 3, 3}));
  EXPECT_EQ(encode("abx"), (std::vector<int32_t>{3}));  // 'x' not in vocab, no unk: dropped
  options.ignore_merges = true;
  const BpeModel whole_words(vocab, merges, options, "test");
  std::vector<int32_t> ids;
  whole_words.encode_word("cab", ids);
  EXPECT_EQ(ids, (std::vector<int32_t>{6}));
}

TEST(TokenizerBpe, MergeOfUnknownSymbolIsRefused) {
  const std::vector<std::pair<std::string, int32_t>> vocab = {{"a", 0}, {"b", 1}};
  try {
    BpeModel(vocab, {{"a", "b"}}, BpeModelOptions{}, "vocab.json");
    FAIL() << "expected an error";
  } catch (const fireq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge 0 uses 'ab'"), std::string::npos) << e.what();
  }
}

class TokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("fireq_tokenizer_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  std::string load_error(const fs::path& path) {
    try {
      fireq::load_tokenizer(path);
    } catch (const fireq::Error& e) {
      return e.what();
    }
    return "no error";
  }
  fs::path dir_;
};

// A tiny byte-level tokenizer.json: single bytes, "he" and "hello" plus one special token.
std::string tiny_tokenizer_json(const std::string& pre_tokenizer) {
  return R"({"version": "1.0", "normalizer": null,
    "added_tokens": [{"id": 9, "content": "<|eot|>", "special": true}],
    "pre_tokenizer": )" + pre_tokenizer + R"(,
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "he": 5,
              "ll": 6, "hell": 7, "hello": 8, "Ċ": 10, "Ġhello": 11},
              "merges": ["h e", "l l", "he ll", "hell o", ["Ġ", "hello"]]}})";
}

TEST_F(TokenizerFiles, TinyTokenizerJson) {
  const auto path = write("tokenizer.json", tiny_tokenizer_json(
      R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})"));
  const auto tokenizer = fireq::load_tokenizer(path);
  EXPECT_EQ(tokenizer->vocab_size(), 12);
  EXPECT_EQ(tokenizer->encode("hello hello<|eot|>\n", false),
            (std::vector<int32_t>{8, 11, 9, 10}));
  EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{8, 11, 9, 10}), "hello hello<|eot|>\n");
  EXPECT_EQ(tokenizer->token_to_piece(11), " hello");
  EXPECT_THROW(tokenizer->decode(std::vector<int32_t>{12}), fireq::Error);
  EXPECT_EQ(tokenizer->bos_id(), -1);
  // Invalid UTF-8 is still tokenized byte by byte (here: dropped bytes outside the vocabulary).
  EXPECT_NO_THROW(tokenizer->encode("he\xFF\xC0llo", false));
}

// Llama-2's tokenizer.json style: spaces as U+2581, a prefix space, byte fallback for the rest.
TEST_F(TokenizerFiles, TinySentencePieceStyleJson) {
  const auto path = write("tokenizer.json", R"({"normalizer": null,
    "added_tokens": [{"id": 7, "content": "<s>", "special": true}],
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                      "split": true},
    "decoder": {"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,
              "vocab": {"<unk>": 0, "<0x21>": 1, "\u2581": 2, "h": 3, "i": 4, "\u2581h": 5,
                        "\u2581hi": 6, "<s>": 7},
              "merges": ["\u2581 h", "\u2581h i"]}})");
  const auto tokenizer = fireq::load_tokenizer(path);
  // "hi hi!?" -> "\u2581hi", "\u2581hi!?": '!' by byte fallback, '?' unknown.
  const std::vector<int32_t> ids = tokenizer->encode("hi hi!?", true);
  EXPECT_EQ(ids, (std::vector<int32_t>{7, 6, 6, 1, 0}));
  EXPECT_EQ(tokenizer->bos_id(), 7);  // found by name: no tokenizer_config.json, no post-processor
  EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{6, 6, 1}), "hi hi!");
  EXPECT_EQ(tokenizer->token_to_piece(6), " hi");
  EXPECT_EQ(tokenizer->token_to_piece(1), "!");
}

// The word cache is shared: concurrent encodes must give what a lone encode gives.
TEST_F(TokenizerFiles, ConcurrentEncodesAgree) {
  const auto tokenizer = fireq::load_tokenizer(write("tokenizer.json", tiny_tokenizer_json(
      R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})")));
  std::mt19937 rng(std::random_device{}());
  const std::vector<std::string> words = {"hello", " ", "he", "\n", "<|eot|>", "ll", "o", "hel"};
  std::vector<std::string> texts(64);
  for (std::string& text : texts) {
    for (int i = 0; i < 200; ++i) text += words[rng() % words.size()];
  }
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(tokenizer->encode(text, false));
  std::atomic<int> mismatches = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) {
        const size_t k = (i + 16 * t) % texts.size();
        mismatches += tokenizer->encode(texts[k], false) != expected[k];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(tokenizer->decode(expected[0]), texts[0]);
}

TEST_F(TokenizerFiles, ErrorsNameTheFileAndProblem) {
  EXPECT_NE(load_error(dir_ / "missing.json").find("no such file"), std::string::npos);
  const auto bad_json = write("bad.json", "{\"model\": ");
  EXPECT_NE(load_error(bad_json).find("bad.json: not valid JSON"), std::string::npos);
  const auto whitespace = write("ws.json", tiny_tokenizer_json(R"({"type": "Whitespace"})"));
  EXPECT_NE(load_error(whitespace).find("pre_tokenizer type 'Whitespace' is not supported"),
            std::string::npos) << load_error(whitespace);
  const auto regex = write("regex.json", tiny_tokenizer_json(
      R"({"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"})"));
  EXPECT_NE(load_error(regex).find("regex is not one we implement"), std::string::npos);
  const auto not_spm = write("x.model", "not a protobuf");
  EXPECT_NE(load_error(not_spm).find("x.model: not a SentencePiece model"), std::string::npos)
      << load_error(not_spm);
  EXPECT_NE(load_error(dir_).find("neither tokenizer.json nor tokenizer.model"), std::string::npos);
}

// A metadata-only GGUF v3 file (no tensors), as llama.cpp stores a tokenizer.
class GgufMetadataWriter {
 public:
  GgufMetadataWriter& string(std::string_view key, std::string_view value) {
    begin(key, 8);
    text(value);
    return *this;
  }
  GgufMetadataWriter& int32(std::string_view key, int32_t value) {
    begin(key, 5);
    raw(value);
    return *this;
  }
  GgufMetadataWriter& strings(std::string_view key, const std::vector<std::string>& values) {
    begin(key, 9);
    raw(uint32_t{8});
    raw(uint64_t{values.size()});
    for (const std::string& v : values) text(v);
    return *this;
  }
  GgufMetadataWriter& int32s(std::string_view key, const std::vector<int32_t>& values) {
    begin(key, 9);
    raw(uint32_t{5});
    raw(uint64_t{values.size()});
    for (const int32_t v : values) raw(v);
    return *this;
  }
  void write(const fs::path& path) const {
    std::string file = "GGUF";
    auto append = [&](auto value) { file.append(reinterpret_cast<const char*>(&value), sizeof value); };
    append(uint32_t{3});
    append(uint64_t{0});
    append(count_);
    file += body_;
    file.append((32 - file.size() % 32) % 32, '\0');
    std::ofstream(path, std::ios::binary) << file;
  }

 private:
  template <typename T>
  void raw(T value) { body_.append(reinterpret_cast<const char*>(&value), sizeof value); }
  void text(std::string_view value) {
    raw(uint64_t{value.size()});
    body_ += value;
  }
  void begin(std::string_view key, uint32_t type) {
    text(key);
    raw(type);
    ++count_;
  }
  std::string body_;
  uint64_t count_ = 0;
};

const std::vector<std::string> kTinyTokens = {"h", "e", "l", "o", "Ġ", "he", "ll", "hell",
                                               "hello", "<|eot|>", "Ċ", "Ġhello"};
const std::vector<std::string> kTinyMerges = {"h e", "l l", "he ll", "hell o", "Ġ hello"};

GgufMetadataWriter tiny_gguf(std::string_view pre) {
  GgufMetadataWriter gguf;
  gguf.string("tokenizer.ggml.model", "gpt2")
      .string("tokenizer.ggml.pre", pre)
      .strings("tokenizer.ggml.tokens", kTinyTokens)
      .strings("tokenizer.ggml.merges", kTinyMerges)
      .int32s("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1})
      .int32("tokenizer.ggml.bos_token_id", 9);
  return gguf;
}

TEST_F(TokenizerFiles, GgufByteLevelBpe) {
  tiny_gguf("gpt-2").write(dir_ / "tiny.gguf");
  const auto tokenizer = fireq::load_tokenizer(dir_ / "tiny.gguf");
  EXPECT_EQ(tokenizer->encode("hello hello<|eot|>\n", true), (std::vector<int32_t>{9, 8, 11, 9, 10}));
  EXPECT_EQ(tokenizer->bos_id(), 9);
  EXPECT_EQ(tokenizer->eos_id(), -1);
  EXPECT_FALSE(tokenizer->add_bos_by_default());
}

TEST_F(TokenizerFiles, GgufErrorsNameTheKey) {
  tiny_gguf("mystery").write(dir_ / "pre.gguf");
  EXPECT_NE(load_error(dir_ / "pre.gguf").find("tokenizer.ggml.pre 'mystery' is not supported"),
            std::string::npos) << load_error(dir_ / "pre.gguf");
  tiny_gguf("gpt-2").int32("tokenizer.ggml.eos_token_id", 12).write(dir_ / "eos.gguf");
  EXPECT_NE(load_error(dir_ / "eos.gguf").find("eos_token_id = 12 is outside the vocabulary"),
            std::string::npos) << load_error(dir_ / "eos.gguf");
  GgufMetadataWriter().string("tokenizer.ggml.model", "bert").write(dir_ / "bert.gguf");
  EXPECT_NE(load_error(dir_ / "bert.gguf").find("tokenizer.ggml.model 'bert' is not supported"),
            std::string::npos);
  GgufMetadataWriter()
      .string("tokenizer.ggml.model", "llama")
      .strings("tokenizer.ggml.tokens", {"<unk>", "a"})
      .write(dir_ / "scores.gguf");
  EXPECT_NE(load_error(dir_ / "scores.gguf").find("tokenizer.ggml.scores"), std::string::npos)
      << load_error(dir_ / "scores.gguf");
  GgufMetadataWriter()
      .string("tokenizer.ggml.model", "gpt2")
      .strings("tokenizer.ggml.tokens", kTinyTokens)
      .strings("tokenizer.ggml.merges", {"h e", "hx"})
      .write(dir_ / "merges.gguf");
  EXPECT_NE(load_error(dir_ / "merges.gguf").find("tokenizer.ggml.merges[1] 'hx' is not two symbols"),
            std::string::npos) << load_error(dir_ / "merges.gguf");
}

}  // namespace
