#include <cstring>
#include <fstream>
#include <sstream>

#include "fireq/error.h"
#include "fireq/model.h"
#include "loaders.h"

namespace fireq {
namespace model {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

void check_shape(const std::vector<int64_t>& actual, const std::vector<int64_t>& expected,
                 const std::string& where) {
  if (actual != expected)
    fail(where, ": shape ", shape_string(actual), " does not match the config's ", shape_string(expected));
}

}  // namespace model

namespace {

bool has_gguf_magic(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace

LlamaWeights load_llama_weights(const std::filesystem::path& path, const ProgressFn& progress) {
  if (!std::filesystem::exists(path)) fail(path.string(), ": no such file or directory");
  if (std::filesystem::is_directory(path)) return model::load_safetensors_weights(path, progress);
  if (path.extension() == ".gguf" || has_gguf_magic(path)) return model::load_gguf_weights(path, progress);
  if (path.extension() == ".safetensors" || path.extension() == ".json")
    return model::load_safetensors_weights(path, progress);
  fail(path.string(), ": not a GGUF file, a .safetensors file or a checkpoint directory");
}

}  // namespace fireq
