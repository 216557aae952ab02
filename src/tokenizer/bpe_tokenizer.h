// A BPE tokenizer as Hugging Face tokenizers runs one: added tokens are cut out of the text
// first, the rest goes through the pre-tokenizer steps and then the BPE model word by word.
// tokenizer.json and GGUF metadata are both turned into a BpeTokenizerSpec.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "bpe_model.h"
#include "fireq/tokenizer.h"
#include "pretokenize.h"

namespace fireq::tokenizer_detail {

struct RegexSplitStep {
  SplitRegex regex;
};
struct DigitsStep {
  bool individual_digits;
};
// Must be the last step: after it the text is in GPT-2's byte-to-unicode alphabet.
struct ByteLevelStep {
  bool add_prefix_space;
  bool use_regex;  // split with the GPT-2 regex
};
using PreTokenizeStep = std::variant<RegexSplitStep, DigitsStep, ByteLevelStep>;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool lstrip = false;  // the match swallows whitespace on its left
  bool rstrip = false;  // ... and on its right
};

struct BpeTokenizerSpec {
  std::string source;  // the file, for error messages
  // Symbols as the file spells them: for byte-level models in GPT-2's byte-to-unicode alphabet
  // ("Ġthe"), converted to raw bytes when the tokenizer is built.
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  BpeModelOptions options;
  std::vector<AddedToken> added_tokens;
  std::vector<PreTokenizeStep> pre_tokenizer;
  int32_t bos_id = -1;
  bool add_bos = false;  // add_bos_by_default()
  int32_t eos_id = -1;
};

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const BpeTokenizerSpec& spec);

// GPT-2's byte-level alphabet: the bytes of `mapped` (UTF-8 of mapped characters), or nullopt
// when a character is outside the alphabet.
std::optional<std::string> unmap_byte_level(std::string_view mapped);

}  // namespace fireq::tokenizer_detail
