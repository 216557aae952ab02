// Text <-> token ids for the models FireQ runs: byte-level BPE as in Hugging Face tokenizer.json
// (GPT-2, Llama-3, SmolLM2) and SentencePiece BPE (Llama-2: its .model file, or the
// tokenizer.json emulation with byte fallback), loaded from a tokenizer.json, a .model, a
// directory holding either, or the tokenizer metadata of a GGUF file.
//
// Ids are identical to what the Hugging Face `tokenizers` package (or `sentencepiece`) produces;
// the tests compare them on a varied corpus.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fireq {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Special and added tokens written in `text` (e.g. "<|im_start|>") become their own ids.
  // `add_bos` prepends bos_id() (ignored when the tokenizer has no BOS token).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  // The text of `ids`, special tokens included verbatim. Out-of-range ids are an error.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // The bytes one token contributes, for streaming output. A multi-byte UTF-8 character may be
  // split over several tokens, so a piece can be an incomplete character: buffer the bytes and
  // print up to complete_utf8_prefix() (see below). A SentencePiece token's word-start marker
  // comes back as a space, also on the first token (decode() drops that one).
  virtual std::string token_to_piece(int32_t id) const = 0;

  virtual int32_t bos_id() const = 0;  // -1 when there is none
  // Whether the model was trained with BOS in front of every text, so encode(text, true) is
  // what generation and perplexity should use: tokenizer_config.json's add_bos_token, else a
  // tokenizer.json post-processor that prepends it; GGUF tokenizer.ggml.add_bos_token (default
  // false for gpt2, true for llama); true for SentencePiece .model files (Llama-2).
  virtual bool add_bos_by_default() const = 0;
  virtual int32_t eos_id() const = 0;  // -1 when there is none
  virtual int32_t vocab_size() const = 0;
};

// Loads a tokenizer.json (BPE), a SentencePiece .model, a directory holding one of
// them (tokenizer.model preferred; bos/eos of a tokenizer.json from the tokenizer_config.json
// beside it when present), or a .gguf file's tokenizer metadata (tokenizer.ggml.model "gpt2" or
// "llama"). Unsupported configurations are refused naming the file and field.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// Length of the longest prefix of `bytes` that does not end inside a UTF-8 character: streaming
// output prints that much and keeps the rest until the next token completes it.
size_t complete_utf8_prefix(std::string_view bytes);

}  // namespace fireq
