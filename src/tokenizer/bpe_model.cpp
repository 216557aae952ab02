#include "bpe_model.h"

#include <cstdio>
#include <queue>

#include "fireq/error.h"
#include "unicode.h"

namespace fireq::tokenizer_detail {
namespace {

constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 18;

std::string byte_fallback_symbol(unsigned char byte) {
  char text[8];
  std::snprintf(text, sizeof text, "<0x%02X>", byte);
  return text;
}

}  // namespace

BpeModel::BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   const BpeModelOptions& options, const std::string& source)
    : options_(options) {
  symbol_to_id_.reserve(vocab.size());
  for (const auto& [symbol, id] : vocab) {
    if (!symbol_to_id_.emplace(symbol, id).second) {
      fail(source, ": vocabulary entry '", symbol, "' appears twice");
    }
  }
  auto id_of = [&](const std::string& symbol, size_t merge_index) {
    const auto it = symbol_to_id_.find(symbol);
    if (it == symbol_to_id_.end()) {
      fail(source, ": merge ", merge_index, " uses '", symbol, "', which is not in the vocabulary");
    }
    return it->second;
  };
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    const int32_t left_id = id_of(left, i);
    const int32_t right_id = id_of(right, i);
    const int32_t merged_id = id_of(left + right, i);
    // A repeated pair keeps its first (highest-priority) rank.
    merges_.emplace(pair_key(left_id, right_id), Merge{static_cast<int32_t>(i), merged_id});
  }
  for (int b = 0; b < 256; ++b) {
    const auto byte = static_cast<unsigned char>(b);
    byte_symbol_ids_[b] = find(std::string(1, static_cast<char>(byte))).value_or(-1);
    byte_fallback_ids_[b] = find(byte_fallback_symbol(byte)).value_or(-1);
  }
}

std::optional<int32_t> BpeModel::find(std::string_view symbol) const {
  const auto it = symbol_to_id_.find(symbol);
  if (it == symbol_to_id_.end()) return std::nullopt;
  return it->second;
}

std::vector<int32_t> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  bool previous_unknown = false;
  auto add_unknown = [&] {
    if (options_.unk_id < 0) return;  // no unknown token: the character is dropped
    if (!(options_.fuse_unk && previous_unknown)) ids.push_back(options_.unk_id);
    previous_unknown = true;
  };
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = options_.byte_level ? 1 : decode_utf8(word, pos).length;
    const std::string_view symbol = word.substr(pos, length);
    pos += length;
    const std::optional<int32_t> id =
        options_.byte_level ? std::optional<int32_t>(byte_symbol_ids_[static_cast<unsigned char>(symbol[0])])
                            : find(symbol);
    if (id && *id >= 0) {
      ids.push_back(*id);
      previous_unknown = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes_known = true;
      for (const char c : symbol) all_bytes_known &= byte_fallback_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all_bytes_known) {
        for (const char c : symbol) ids.push_back(byte_fallback_ids_[static_cast<unsigned char>(c)]);
        previous_unknown = false;
        continue;
      }
    }
    add_unknown();
  }
  return ids;
}

void BpeModel::merge_symbols(std::vector<int32_t>& ids) const {
  if (ids.size() < 2) return;
  // Symbols form a linked list over their initial positions; a merge keeps the left position.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const int32_t n = static_cast<int32_t>(ids.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) symbols[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1};

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.pos];
    // Stale when either side has changed since the candidate was queued.
    if (left.id != c.left_id || left.next < 0 || symbols[left.next].id != c.right_id) continue;
    Symbol& right = symbols[left.next];
    left.id = c.merged_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.pos;
    right.id = -1;
    consider(left.prev);
    consider(c.pos);
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto id = find(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    const std::lock_guard lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids = initial_symbols(word);
  merge_symbols(ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    const std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }
}

}  // namespace fireq::tokenizer_detail
