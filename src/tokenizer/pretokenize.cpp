#include "pretokenize.h"

#include <cstddef>

#include "unicode.h"

namespace fireq::tokenizer_detail {
namespace {

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass classify(char32_t c) {
  if (is_letter(c)) return CharClass::kLetter;
  if (is_number(c)) return CharClass::kNumber;
  if (is_whitespace(c)) return CharClass::kSpace;
  return CharClass::kOther;
}

// Matching state over one piece: the regexes are anchored at `pos` and see only `text` (the
// lookahead (?!\S) treats the end of the piece as the end of the string, as tokenizers does).
class Matcher {
 public:
  explicit Matcher(std::string_view text) : text_(text) {}

  size_t size() const { return text_.size(); }
  DecodedChar at(size_t pos) const { return decode_utf8(text_, pos); }
  CharClass class_at(size_t pos) const { return classify(at(pos).code_point); }
  bool is_newline(size_t pos) const { return text_[pos] == '\r' || text_[pos] == '\n'; }

  // End of the run of characters of class `cls` starting at pos, at most `max_chars` long.
  size_t run_end(size_t pos, CharClass cls, size_t max_chars = SIZE_MAX) const {
    for (size_t count = 0; pos < size() && count < max_chars; ++count) {
      const DecodedChar c = at(pos);
      if (classify(c.code_point) != cls) break;
      pos += c.length;
    }
    return pos;
  }

  size_t newline_run_end(size_t pos) const {
    while (pos < size() && is_newline(pos)) ++pos;
    return pos;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive ((?i:...) folds U+017F LONG S to s).
  size_t contraction(size_t pos, bool ignore_case) const {
    if (text_[pos] != '\'' || pos + 1 >= size()) return 0;
    auto letter = [&](size_t p, size_t* length) -> char32_t {
      if (p >= size()) return 0;
      const DecodedChar c = at(p);
      *length = c.length;
      if (!ignore_case) return c.code_point;
      if (c.code_point == 0x17F) return 's';
      return c.code_point < 0x80 && c.code_point >= 'A' && c.code_point <= 'Z' ? c.code_point | 0x20
                                                                                 : c.code_point;
    };
    size_t first_length = 0;
    const char32_t first = letter(pos + 1, &first_length);
    if (first == 's' || first == 't' || first == 'm' || first == 'd') return 1 + first_length;
    size_t second_length = 0;
    const char32_t second = letter(pos + 1 + first_length, &second_length);
    const bool pair = (first == 'r' && second == 'e') || (first == 'v' && second == 'e') ||
                      (first == 'l' && second == 'l');
    return pair ? 1 + first_length + second_length : 0;
  }

  // ` ?X+` where X is class `cls`: an optional leading ASCII space, then a run of X.
  size_t optional_space_then_run(size_t pos, CharClass cls) const {
    if (text_[pos] == ' ' && pos + 1 < size() && class_at(pos + 1) == cls) {
      return run_end(pos + 1, cls) - pos;
    }
    return class_at(pos) == cls ? run_end(pos, cls) - pos : 0;
  }

  // \s+(?!\S)|\s+ at a whitespace character: the whole run when it ends the piece or is one
  // character long, else the run less its last character (which then prefixes the next word).
  size_t trailing_whitespace(size_t pos) const {
    size_t end = pos;
    size_t last_start = pos;
    while (end < size()) {
      const DecodedChar c = at(end);
      if (!is_whitespace(c.code_point)) break;
      last_start = end;
      end += c.length;
    }
    if (end == size() || last_start == pos) return end - pos;
    return last_start - pos;
  }

  // \s*[\r\n]+ at a whitespace character: up to and including the run's last \r or \n.
  size_t whitespace_through_newline(size_t pos) const {
    size_t end = pos;
    size_t newline_end = 0;
    while (end < size()) {
      const DecodedChar c = at(end);
      if (!is_whitespace(c.code_point)) break;
      end += c.length;
      if (c.code_point == '\r' || c.code_point == '\n') newline_end = end;
    }
    return newline_end == 0 ? 0 : newline_end - pos;
  }

  size_t match_gpt2(size_t pos) const {
    if (const size_t n = contraction(pos, false)) return n;
    for (const CharClass cls : {CharClass::kLetter, CharClass::kNumber, CharClass::kOther}) {
      if (const size_t n = optional_space_then_run(pos, cls)) return n;
    }
    return class_at(pos) == CharClass::kSpace ? trailing_whitespace(pos) : 0;
  }

  size_t match_llama3(size_t pos, size_t max_digits) const {
    if (const size_t n = contraction(pos, true)) return n;
    const DecodedChar first = at(pos);
    const CharClass first_class = classify(first.code_point);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (first_class == CharClass::kLetter) return run_end(pos, CharClass::kLetter) - pos;
    const bool may_prefix = first_class != CharClass::kNumber && !is_newline(pos);
    if (may_prefix && pos + first.length < size() &&
        class_at(pos + first.length) == CharClass::kLetter) {
      return run_end(pos + first.length, CharClass::kLetter) - pos;
    }
    // \p{N}{1,max_digits}
    if (first_class == CharClass::kNumber) {
      return run_end(pos, CharClass::kNumber, max_digits) - pos;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    if (const size_t n = optional_space_then_run(pos, CharClass::kOther)) {
      return newline_run_end(pos + n) - pos;
    }
    if (first_class != CharClass::kSpace) return 0;
    if (const size_t n = whitespace_through_newline(pos)) return n;
    return trailing_whitespace(pos);
  }

 private:
  std::string_view text_;
};

}  // namespace

std::optional<SplitRegex> recognise_split_regex(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return SplitRegex::kGpt2;
  if (pattern == kLlama3Pattern) return SplitRegex::kLlama3;
  if (pattern == kQwen2Pattern) return SplitRegex::kQwen2;
  return std::nullopt;
}

void split_by_regex(SplitRegex regex, std::string_view text, std::vector<std::string_view>& out) {
  const Matcher matcher(text);
  size_t gap_start = 0;  // characters no alternative matches stay together as their own piece
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    switch (regex) {
      case SplitRegex::kGpt2: length = matcher.match_gpt2(pos); break;
      case SplitRegex::kLlama3: length = matcher.match_llama3(pos, 3); break;
      case SplitRegex::kQwen2: length = matcher.match_llama3(pos, 1); break;
    }
    if (length == 0) {
      pos += matcher.at(pos).length;
      continue;
    }
    if (gap_start < pos) out.push_back(text.substr(gap_start, pos - gap_start));
    out.push_back(text.substr(pos, length));
    pos += length;
    gap_start = pos;
  }
  if (gap_start < text.size()) out.push_back(text.substr(gap_start));
}

void split_digits(std::string_view text, bool individual_digits,
                  std::vector<std::string_view>& out) {
  size_t piece_start = 0;
  size_t pos = 0;
  bool piece_is_number = false;
  while (pos < text.size()) {
    const DecodedChar c = decode_utf8(text, pos);
    const bool number = is_number(c.code_point);
    const bool boundary = pos > piece_start && (number != piece_is_number || (number && individual_digits));
    if (boundary) {
      out.push_back(text.substr(piece_start, pos - piece_start));
      piece_start = pos;
    }
    piece_is_number = number;
    pos += c.length;
  }
  if (piece_start < text.size()) out.push_back(text.substr(piece_start));
}

}  // namespace fireq::tokenizer_detail
