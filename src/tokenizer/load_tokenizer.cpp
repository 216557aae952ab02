#include <filesystem>

#include "fireq/error.h"
#include "fireq/tokenizer.h"
#include "loaders.h"

namespace fireq {

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  using namespace tokenizer_detail;
  if (!fs::exists(path)) fail(path.string(), ": no such file or directory");
  if (fs::is_directory(path)) {
    // Llama-2-style checkpoints ship both; their tokenizer.json is a SentencePiece emulation
    // (Metaspace, byte fallback) that the original .model defines exactly.
    if (fs::exists(path / "tokenizer.model")) return load_sentencepiece_model(path / "tokenizer.model");
    if (fs::exists(path / "tokenizer.json")) {
      return load_tokenizer_json(path / "tokenizer.json", path / "tokenizer_config.json");
    }
    fail(path.string(), ": directory holds neither tokenizer.json nor tokenizer.model");
  }
  const std::string extension = path.extension().string();
  if (extension == ".json") {
    return load_tokenizer_json(path, path.parent_path() / "tokenizer_config.json");
  }
  if (extension == ".model") return load_sentencepiece_model(path);
  if (extension == ".gguf") return load_gguf_tokenizer(path);
  fail(path.string(), ": not a tokenizer (expected tokenizer.json, a SentencePiece .model, "
       "a directory holding one, or a .gguf file)");
}

}  // namespace fireq
