// A BPE tokenizer as Hugging Face tokenizers runs one: added tokens are cut out of the text
// first, each stretch between them is normalized, split by the pre-tokenizer steps, and the BPE
// model encodes the pieces one by one. tokenizer.json and GGUF metadata are both turned into a
// BpeTokenizerSpec. Two families: byte-level BPE (GPT-2, Llama-3, SmolLM2) and SentencePiece
// emulations over UTF-8 characters with byte fallback (Llama-2's tokenizer.json).
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
// SentencePiece emulation: spaces become the replacement ("\u2581"), which may be prepended.
struct MetaspaceStep {
  enum class Prepend { kAlways, kFirst, kNever };  // kFirst: only at the start of the text
  std::string replacement;
  Prepend prepend;
  bool split;  // split before every replacement
};
using PreTokenizeStep = std::variant<RegexSplitStep, DigitsStep, ByteLevelStep, MetaspaceStep>;

// Normalizers, applied to each stretch of text between added tokens.
struct PrependStep {
  std::string prefix;  // prepended to non-empty text
};
struct ReplaceStep {
  std::string from;
  std::string to;
};
using NormalizeStep = std::variant<PrependStep, ReplaceStep>;

// How the symbols of a model that is not byte-level become text.
struct SymbolDecoding {
  enum class LeadingSpace { kKeep, kStripFromText, kStripFromFirstToken };
  std::string space_marker;   // symbols spell a space as this (e.g. "\u2581"); empty: verbatim
  bool byte_fallback = false;  // "<0xAB>" symbols stand for the byte 0xAB
  // The space a SentencePiece-style prefix added: dropped from the decoded text's start
  // (decoders Fuse then Strip) or from the first token (Metaspace decoder).
  LeadingSpace leading_space = LeadingSpace::kKeep;
};

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
  std::vector<NormalizeStep> normalizer;
  std::vector<PreTokenizeStep> pre_tokenizer;
  SymbolDecoding decoding;  // ignored for byte-level models
  int32_t bos_id = -1;
  bool add_bos = false;  // add_bos_by_default()
  int32_t eos_id = -1;
};

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const BpeTokenizerSpec& spec);

// GPT-2's byte-level alphabet: the bytes of `mapped` (UTF-8 of mapped characters), or nullopt
// when a character is outside the alphabet.
std::optional<std::string> unmap_byte_level(std::string_view mapped);

}  // namespace fireq::tokenizer_detail
