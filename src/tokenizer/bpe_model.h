// The BPE model: a vocabulary, ranked merges, and the merge loop that turns one pre-tokenized
// word into ids (Hugging Face tokenizers' models::bpe semantics: lowest-rank pair first, leftmost
// on ties; ignore_merges; byte fallback; unknown-token fusing).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fireq::tokenizer_detail {

struct BpeModelOptions {
  // Words are raw bytes and the initial symbols are single bytes (byte-level BPE); otherwise the
  // initial symbols are UTF-8 characters.
  bool byte_level = false;
  bool byte_fallback = false;  // characters outside the vocabulary become <0xXX> tokens
  bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
  bool fuse_unk = false;       // consecutive unknown characters become one unknown token
  int32_t unk_id = -1;         // -1: characters outside the vocabulary are dropped
};

// Lets unordered_map<std::string, ...> be searched with a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `vocab`: (symbol string, id) pairs, raw bytes for byte-level models. `merges`: pairs of
  // symbol strings, highest priority first. `source` names the file in error messages.
  BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges,
           const BpeModelOptions& options, const std::string& source);

  // Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> find(std::string_view symbol) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  std::vector<int32_t> initial_symbols(std::string_view word) const;
  void merge_symbols(std::vector<int32_t>& ids) const;

  BpeModelOptions options_;
  StringMap<int32_t> symbol_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_symbol_ids_[256];     // byte-level: the id of each single byte, -1 if absent
  int32_t byte_fallback_ids_[256];   // byte fallback: the id of "<0xXX>", -1 if absent

  // Words repeat a lot in text: remember their ids. Guarded by a mutex so that a const
  // Tokenizer can be shared between threads.
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace fireq::tokenizer_detail
