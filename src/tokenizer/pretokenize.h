// Pre-tokenizers of Hugging Face tokenizers, hand-written: the splitting regexes that byte-level
// BPE tokenizers ship (GPT-2, Llama-3, Qwen2), and Digits. Each appends the pieces of `text` to
// `out` in order; the pieces cover `text` exactly (tokenizers' Split with behavior "Isolated").
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace fireq::tokenizer_detail {

enum class SplitRegex {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,   // the Llama-3 regex with \p{N} (one digit) instead of \p{N}{1,3}
};

// The regex a tokenizer.json Split pattern spells, if it is one we implement.
std::optional<SplitRegex> recognise_split_regex(std::string_view pattern);

void split_by_regex(SplitRegex regex, std::string_view text, std::vector<std::string_view>& out);

// Digits(individual_digits): every numeric character (\p{N}) its own piece, or numeric runs.
void split_digits(std::string_view text, bool individual_digits,
                  std::vector<std::string_view>& out);

}  // namespace fireq::tokenizer_detail
