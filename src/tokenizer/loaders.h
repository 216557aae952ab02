// The file formats load_tokenizer() dispatches to.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "fireq/tokenizer.h"

namespace fireq::tokenizer_detail {

// `config_path`: a tokenizer_config.json naming bos_token / eos_token (may be empty or absent).
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& path,
                                               const std::filesystem::path& config_path);
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::filesystem::path& path);
// A serialized sentencepiece ModelProto; `source` names its origin in error messages.
std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& serialized,
                                                    const std::string& source, bool add_bos);
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::filesystem::path& path);

}  // namespace fireq::tokenizer_detail
