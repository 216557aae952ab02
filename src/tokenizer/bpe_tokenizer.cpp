#include "bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <deque>
#include <string_view>

#include "fireq/error.h"
#include "unicode.h"

namespace fireq::tokenizer_detail {
namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// are given the code points 256, 257, ... in byte order.
std::array<char32_t, 256> byte_to_code_point() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// Start of the run of whitespace characters that ends at `end`, not reaching before `floor`.
size_t whitespace_run_start(std::string_view text, size_t floor, size_t end) {
  while (end > floor) {
    size_t start = end - 1;  // step back to the lead byte of the previous character
    while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    const DecodedChar c = decode_utf8(text, start);
    if (start + c.length != end || !is_whitespace(c.code_point)) break;
    end = start;
  }
  return end;
}

size_t whitespace_run_end(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    const DecodedChar c = decode_utf8(text, begin);
    if (!is_whitespace(c.code_point)) break;
    begin += c.length;
  }
  return begin;
}

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0;;) {
    const size_t found = text.find(from, pos);
    out.append(text.substr(pos, found - pos));
    if (found == std::string_view::npos) return out;
    out.append(to);
    pos = found + from.size();
  }
}

std::string normalize(const std::vector<NormalizeStep>& steps, std::string_view text) {
  std::string out(text);
  for (const NormalizeStep& step : steps) {
    if (const auto* prepend = std::get_if<PrependStep>(&step)) {
      if (!out.empty()) out.insert(0, prepend->prefix);
    } else {
      const auto& replace = std::get<ReplaceStep>(step);
      out = replace_all(out, replace.from, replace.to);
    }
  }
  return out;
}

std::string apply_metaspace(const MetaspaceStep& step, std::string_view piece, bool at_text_start) {
  std::string out = replace_all(piece, " ", step.replacement);
  const bool prepend = step.prepend == MetaspaceStep::Prepend::kAlways ||
                       (step.prepend == MetaspaceStep::Prepend::kFirst && at_text_start);
  if (prepend && !out.starts_with(step.replacement)) out.insert(0, step.replacement);
  return out;
}

// Pieces that each start at an occurrence of `marker` (tokenizers' MergedWithNext split).
void split_before(std::string_view marker, std::string_view text, std::vector<std::string_view>& out) {
  size_t start = 0;
  for (size_t found = text.find(marker, 1); found != std::string_view::npos;
       found = text.find(marker, found + marker.size())) {
    if (found > start) out.push_back(text.substr(start, found - start));
    start = found;
  }
  if (start < text.size()) out.push_back(text.substr(start));
}

// The byte a "<0xAB>" byte-fallback symbol stands for.
std::optional<char> byte_fallback_value(std::string_view symbol) {
  if (symbol.size() != 6 || !symbol.starts_with("<0x") || symbol[5] != '>') return std::nullopt;
  int value = 0;
  for (const char c : symbol.substr(3, 2)) {
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<char>(value);
}

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const BpeTokenizerSpec& spec);

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  std::string token_to_piece(int32_t id) const override;
  int32_t bos_id() const override { return bos_id_; }
  bool add_bos_by_default() const override { return add_bos_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }

 private:
  struct AddedTokenMatch {
    size_t begin;        // of the swallowed text, lstrip/rstrip whitespace included
    size_t end;
    int32_t id;
  };
  std::optional<AddedTokenMatch> find_added_token(std::string_view text, size_t from) const;
  void encode_plain_text(std::string_view text, bool at_text_start, std::vector<int32_t>& out) const;
  std::string symbol_text(const std::string& symbol) const;
  const std::string& piece(int32_t id) const;

  std::string source_;
  std::unique_ptr<BpeModel> model_;
  std::vector<AddedToken> added_tokens_;  // longest first, so the first match is the longest
  std::array<bool, 256> starts_added_token_{};  // first bytes of added tokens, to skip ahead
  std::vector<NormalizeStep> normalizer_;
  std::vector<PreTokenizeStep> pre_tokenizer_;
  SymbolDecoding decoding_;
  std::vector<std::string> pieces_;       // the bytes of each id
  std::vector<bool> defined_;             // ids the vocabulary or added tokens define
  int32_t bos_id_;
  bool add_bos_;
  int32_t eos_id_;
};

BpeTokenizer::BpeTokenizer(const BpeTokenizerSpec& spec)
    : source_(spec.source),
      added_tokens_(spec.added_tokens),
      normalizer_(spec.normalizer),
      pre_tokenizer_(spec.pre_tokenizer),
      decoding_(spec.decoding),
      bos_id_(spec.bos_id),
      add_bos_(spec.add_bos && spec.bos_id >= 0),
      eos_id_(spec.eos_id) {
  for (size_t i = 0; i < pre_tokenizer_.size(); ++i) {
    if (std::holds_alternative<ByteLevelStep>(pre_tokenizer_[i]) && i + 1 != pre_tokenizer_.size()) {
      fail(source_, ": pre_tokenizer: ByteLevel must be the last step");
    }
  }
  int32_t max_id = -1;
  for (const auto& [symbol, id] : spec.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& token : added_tokens_) max_id = std::max(max_id, token.id);
  pieces_.resize(max_id + 1);
  defined_.resize(max_id + 1);

  // Model symbols in the model's own alphabet (raw bytes for byte-level BPE).
  std::vector<std::pair<std::string, int32_t>> model_vocab;
  model_vocab.reserve(spec.vocab.size());
  for (const auto& [symbol, id] : spec.vocab) {
    if (id < 0) fail(source_, ": vocabulary entry '", symbol, "' has negative id ", id);
    defined_[id] = true;
    if (!spec.options.byte_level) {
      pieces_[id] = symbol_text(symbol);
      model_vocab.emplace_back(symbol, id);
      continue;
    }
    // A symbol outside the byte alphabet cannot come out of byte-level pre-tokenization; like
    // tokenizers' ByteLevel decoder, decoding gives it back verbatim.
    const std::optional<std::string> bytes = unmap_byte_level(symbol);
    pieces_[id] = bytes.value_or(symbol);
    if (bytes) model_vocab.emplace_back(*bytes, id);
  }
  std::vector<std::pair<std::string, std::string>> model_merges;
  model_merges.reserve(spec.merges.size());
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [left, right] = spec.merges[i];
    if (!spec.options.byte_level) {
      model_merges.emplace_back(left, right);
      continue;
    }
    const auto left_bytes = unmap_byte_level(left);
    const auto right_bytes = unmap_byte_level(right);
    if (!left_bytes || !right_bytes) {
      fail(source_, ": merge ", i, " ('", left, "' '", right, "') is outside the byte-level alphabet");
    }
    model_merges.emplace_back(*left_bytes, *right_bytes);
  }
  model_ = std::make_unique<BpeModel>(model_vocab, model_merges, spec.options, source_);

  for (const AddedToken& token : added_tokens_) {
    if (token.content.empty()) fail(source_, ": added token ", token.id, " is empty");
    pieces_[token.id] = token.content;
    defined_[token.id] = true;
    starts_added_token_[static_cast<unsigned char>(token.content[0])] = true;
  }
  std::stable_sort(added_tokens_.begin(), added_tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) {
                     return a.content.size() > b.content.size();
                   });
  for (const int32_t id : {bos_id_, eos_id_}) {
    if (id >= static_cast<int32_t>(pieces_.size()) || (id >= 0 && !defined_[id])) {
      fail(source_, ": special token id ", id, " is not in the vocabulary");
    }
  }
}

// Leftmost match, longest among those starting there (tokenizers' added-vocabulary splitting).
std::optional<BpeTokenizer::AddedTokenMatch> BpeTokenizer::find_added_token(std::string_view text,
                                                                            size_t from) const {
  if (added_tokens_.empty()) return std::nullopt;
  for (size_t pos = from; pos < text.size(); ++pos) {
    if (!starts_added_token_[static_cast<unsigned char>(text[pos])]) continue;
    for (const AddedToken& token : added_tokens_) {
      if (text.compare(pos, token.content.size(), token.content) != 0) continue;
      AddedTokenMatch match{pos, pos + token.content.size(), token.id};
      if (token.lstrip) match.begin = whitespace_run_start(text, from, match.begin);
      if (token.rstrip) match.end = whitespace_run_end(text, match.end);
      return match;
    }
  }
  return std::nullopt;
}

void BpeTokenizer::encode_plain_text(std::string_view text, bool at_text_start,
                                     std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::deque<std::string> owned;  // text that normalizers and pre-tokenizers rewrote
  if (!normalizer_.empty()) text = owned.emplace_back(normalize(normalizer_, text));
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  for (const PreTokenizeStep& step : pre_tokenizer_) {
    next.clear();
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string_view piece = pieces[i];
      if (const auto* split = std::get_if<RegexSplitStep>(&step)) {
        split_by_regex(split->regex, piece, next);
      } else if (const auto* digits = std::get_if<DigitsStep>(&step)) {
        split_digits(piece, digits->individual_digits, next);
      } else if (const auto* metaspace = std::get_if<MetaspaceStep>(&step)) {
        const bool at_start = at_text_start && i == 0;
        piece = owned.emplace_back(apply_metaspace(*metaspace, piece, at_start));
        if (metaspace->split) {
          split_before(metaspace->replacement, piece, next);
        } else {
          next.push_back(piece);
        }
      } else {
        const auto& byte_level = std::get<ByteLevelStep>(step);
        if (byte_level.add_prefix_space && !piece.starts_with(' ')) {
          std::string& with_space = owned.emplace_back(1, ' ');
          with_space.append(piece);
          piece = with_space;
        }
        if (byte_level.use_regex) {
          split_by_regex(SplitRegex::kGpt2, piece, next);
        } else {
          next.push_back(piece);
        }
      }
    }
    pieces.swap(next);
  }
  for (const std::string_view piece : pieces) model_->encode_word(piece, out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  size_t pos = 0;
  while (pos < text.size()) {
    const std::optional<AddedTokenMatch> match = find_added_token(text, pos);
    const size_t plain_end = match ? match->begin : text.size();
    encode_plain_text(text.substr(pos, plain_end - pos), pos == 0, ids);
    if (!match) break;
    ids.push_back(match->id);
    pos = match->end;
  }
  return ids;
}

// The text a model symbol stands for, for models that are not byte-level.
std::string BpeTokenizer::symbol_text(const std::string& symbol) const {
  if (decoding_.byte_fallback) {
    if (const std::optional<char> byte = byte_fallback_value(symbol)) return std::string(1, *byte);
  }
  if (decoding_.space_marker.empty()) return symbol;
  return replace_all(symbol, decoding_.space_marker, " ");
}

const std::string& BpeTokenizer::piece(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(pieces_.size()) || !defined_[id]) {
    fail(source_, ": token id ", id, " is not in the vocabulary (size ", pieces_.size(), ")");
  }
  return pieces_[id];
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  using LeadingSpace = SymbolDecoding::LeadingSpace;
  std::string text;
  bool may_strip = decoding_.leading_space != LeadingSpace::kKeep;  // one space, once
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string& p = piece(ids[i]);
    const bool strip = may_strip && p.starts_with(' ');
    text.append(p, strip ? 1 : 0);
    if (strip || decoding_.leading_space == LeadingSpace::kStripFromFirstToken || !text.empty()) {
      may_strip = false;
    }
  }
  return text;
}

std::string BpeTokenizer::token_to_piece(int32_t id) const { return piece(id); }

}  // namespace

std::optional<std::string> unmap_byte_level(std::string_view mapped) {
  static const std::array<int, 0x144> code_point_to_byte = [] {
    std::array<int, 0x144> table;
    table.fill(-1);
    const std::array<char32_t, 256> forward = byte_to_code_point();
    for (int b = 0; b < 256; ++b) table[forward[b]] = b;
    return table;
  }();
  std::string bytes;
  bytes.reserve(mapped.size());
  for (size_t pos = 0; pos < mapped.size();) {
    const DecodedChar c = decode_utf8(mapped, pos);
    if (c.code_point >= code_point_to_byte.size() || code_point_to_byte[c.code_point] < 0) {
      return std::nullopt;
    }
    bytes.push_back(static_cast<char>(code_point_to_byte[c.code_point]));
    pos += c.length;
  }
  return bytes;
}

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const BpeTokenizerSpec& spec) {
  return std::make_unique<BpeTokenizer>(spec);
}

}  // namespace fireq::tokenizer_detail
