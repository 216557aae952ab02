// The tokenizer stored in a GGUF file's metadata (llama.cpp's tokenizer.ggml.* keys):
//   model "gpt2":  byte-level BPE from tokens + merges, pre-tokenizer chosen by tokenizer.ggml.pre;
//   model "llama": SentencePiece BPE (Llama-2) from tokens + scores + token types, run by
//                  libsentencepiece from a ModelProto assembled here.
#include <cstring>
#include <string>
#include <vector>

#include "bpe_tokenizer.h"
#include "fireq/error.h"
#include "fireq/gguf.h"
#include "loaders.h"

namespace fireq::tokenizer_detail {
namespace {

// llama.cpp's token types (the same numbers as SentencePiece's ModelProto piece types).
enum GgufTokenType : int64_t {
  kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

std::vector<int64_t> token_types(const GgufFile& file, size_t vocab_size) {
  if (!file.has("tokenizer.ggml.token_type")) return std::vector<int64_t>(vocab_size, kNormal);
  std::vector<int64_t> types = file.get_int_array("tokenizer.ggml.token_type");
  if (types.size() != vocab_size) {
    fail(file.path().string(), ": tokenizer.ggml.token_type has ", types.size(),
         " entries for ", vocab_size, " tokens");
  }
  return types;
}

int32_t optional_token_id(const GgufFile& file, std::string_view key, size_t vocab_size) {
  const int64_t id = file.get_int(key, -1);
  if (id < -1 || id >= static_cast<int64_t>(vocab_size)) {
    fail(file.path().string(), ": ", key, " = ", id, " is outside the vocabulary of ", vocab_size);
  }
  return static_cast<int32_t>(id);
}

// The pre-tokenizer each tokenizer.ggml.pre value stands for (as llama.cpp and the models'
// Hugging Face tokenizer.json files define them).
void set_pre_tokenizer(const GgufFile& file, BpeTokenizerSpec& spec) {
  const std::string pre = file.get_string("tokenizer.ggml.pre", "gpt-2");
  if (pre == "smollm") {
    spec.pre_tokenizer = {DigitsStep{true}, ByteLevelStep{false, true}};
  } else if (pre == "gpt-2") {
    spec.pre_tokenizer = {ByteLevelStep{false, true}};
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    spec.pre_tokenizer = {RegexSplitStep{SplitRegex::kLlama3}, ByteLevelStep{false, false}};
    spec.options.ignore_merges = true;
  } else if (pre == "qwen2") {
    spec.pre_tokenizer = {RegexSplitStep{SplitRegex::kQwen2}, ByteLevelStep{false, false}};
  } else {
    fail(file.path().string(), ": tokenizer.ggml.pre '", pre,
         "' is not supported (smollm, gpt-2, llama-bpe, qwen2)");
  }
}

std::unique_ptr<Tokenizer> load_gguf_bpe(const GgufFile& file) {
  const std::string source = file.path().string();
  BpeTokenizerSpec spec;
  spec.source = source;
  spec.options.byte_level = true;
  const std::vector<std::string> tokens = file.get_string_array("tokenizer.ggml.tokens");
  const std::vector<int64_t> types = token_types(file, tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    spec.vocab.emplace_back(tokens[id], static_cast<int32_t>(id));
    if (types[id] == kControl || types[id] == kUserDefined) {
      spec.added_tokens.push_back({tokens[id], static_cast<int32_t>(id), false, false});
    }
  }
  const std::vector<std::string> merges = file.get_string_array("tokenizer.ggml.merges");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const size_t space = merges[i].find(' ');
    if (space == std::string::npos || merges[i].find(' ', space + 1) != std::string::npos) {
      fail(source, ": tokenizer.ggml.merges[", i, "] '", merges[i], "' is not two symbols");
    }
    spec.merges.emplace_back(merges[i].substr(0, space), merges[i].substr(space + 1));
  }
  set_pre_tokenizer(file, spec);
  spec.bos_id = optional_token_id(file, "tokenizer.ggml.bos_token_id", tokens.size());
  spec.eos_id = optional_token_id(file, "tokenizer.ggml.eos_token_id", tokens.size());
  spec.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", false);
  return make_bpe_tokenizer(spec);
}

// Just enough protobuf (wire format) to write a sentencepiece ModelProto.
class ProtoWriter {
 public:
  void varint(int field, uint64_t value) {
    key(field, 0);
    raw_varint(value);
  }
  void boolean(int field, bool value) { varint(field, value ? 1 : 0); }
  void int32(int field, int32_t value) { varint(field, static_cast<uint64_t>(static_cast<int64_t>(value))); }
  void float32(int field, float value) {
    key(field, 5);
    char bytes[4];
    std::memcpy(bytes, &value, 4);  // protobuf is little-endian, as is x86-64 / aarch64
    out_.append(bytes, 4);
  }
  void bytes(int field, std::string_view value) {
    key(field, 2);
    raw_varint(value.size());
    out_.append(value);
  }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire_type) { raw_varint(static_cast<uint64_t>(field) << 3 | wire_type); }
  void raw_varint(uint64_t value) {
    while (value >= 0x80) {
      out_.push_back(static_cast<char>(value | 0x80));
      value >>= 7;
    }
    out_.push_back(static_cast<char>(value));
  }
  std::string out_;
};

// Field numbers of sentencepiece_model.proto.
std::string sentencepiece_model_proto(const GgufFile& file) {
  const std::string source = file.path().string();
  const std::vector<std::string> tokens = file.get_string_array("tokenizer.ggml.tokens");
  const std::vector<double> scores = file.get_float_array("tokenizer.ggml.scores");
  const std::vector<int64_t> types = token_types(file, tokens.size());
  if (scores.size() != tokens.size()) {
    fail(source, ": tokenizer.ggml.scores has ", scores.size(), " entries for ", tokens.size(), " tokens");
  }
  ProtoWriter model;
  bool has_bytes = false;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (types[id] < kNormal || types[id] > kByte) {
      fail(source, ": tokenizer.ggml.token_type[", id, "] = ", types[id], " is not a token type");
    }
    has_bytes |= types[id] == kByte;
    ProtoWriter piece;
    piece.bytes(1, tokens[id]);
    piece.float32(2, static_cast<float>(scores[id]));
    piece.varint(3, static_cast<uint64_t>(types[id]));
    model.bytes(1, piece.str());  // ModelProto.pieces
  }
  auto token_or_empty = [&](std::string_view key) -> std::string {
    const int32_t id = optional_token_id(file, key, tokens.size());
    return id >= 0 ? tokens[id] : "";
  };
  ProtoWriter trainer;
  trainer.varint(3, 2);  // model_type = BPE
  trainer.boolean(35, has_bytes);  // byte_fallback
  for (const auto& [field, key] : {std::pair{45, "tokenizer.ggml.unknown_token_id"},
                                   std::pair{46, "tokenizer.ggml.bos_token_id"},
                                   std::pair{47, "tokenizer.ggml.eos_token_id"}}) {
    const std::string piece = token_or_empty(key);
    if (!piece.empty()) trainer.bytes(field, piece);  // unk_piece, bos_piece, eos_piece
  }
  model.bytes(2, trainer.str());  // ModelProto.trainer_spec
  ProtoWriter normalizer;
  normalizer.bytes(1, "identity");
  normalizer.boolean(3, file.get_bool("tokenizer.ggml.add_space_prefix", true));
  normalizer.boolean(4, file.get_bool("tokenizer.ggml.remove_extra_whitespaces", false));
  normalizer.boolean(5, true);  // escape_whitespaces: ' ' -> U+2581
  model.bytes(3, normalizer.str());  // ModelProto.normalizer_spec
  return model.str();
}

}  // namespace

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::filesystem::path& path) {
  const GgufFile file(path);
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model == "gpt2") return load_gguf_bpe(file);
  if (model == "llama") {
    return load_sentencepiece_proto(sentencepiece_model_proto(file), path.string() + " (tokenizer)",
                                    file.get_bool("tokenizer.ggml.add_bos_token", true));
  }
  fail(path.string(), ": tokenizer.ggml.model '", model, "' is not supported (gpt2, llama)");
}

}  // namespace fireq::tokenizer_detail
