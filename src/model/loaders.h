// The two checkpoint loaders behind load_llama_weights, and the shape check they share.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "fireq/model.h"

namespace fireq::model {

LlamaWeights load_gguf_weights(const std::filesystem::path& path, const ProgressFn& progress);

// `path`: a directory with config.json, or a .safetensors / .index.json file beside one.
LlamaWeights load_safetensors_weights(const std::filesystem::path& path, const ProgressFn& progress);

// Fails naming `where` (file and tensor) unless `actual` equals `expected`.
void check_shape(const std::vector<int64_t>& actual, const std::vector<int64_t>& expected,
                 const std::string& where);

}  // namespace fireq::model
