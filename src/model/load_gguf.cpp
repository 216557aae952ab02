// GGUF -> LlamaWeights. llama.cpp's converter reorders the rows of attn_q / attn_k within each
// head so that its RoPE can rotate adjacent pairs (2i, 2i+1); Hugging Face rotates (i, i + d/2).
// Hugging Face row h*d + s*d/2 + i is stored as GGUF row h*d + 2i + s (s = 0, 1; i < d/2); the
// loader moves every row back. Qwen2 GGUFs use the rotate_half RoPE and are not permuted.
#include <map>
#include <sstream>

#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/model.h"
#include "loaders.h"

namespace fireq::model {
namespace {

// Undo llama.cpp's q/k row permutation for a [heads * head_dim, cols] matrix (or a bias vector).
void unpermute_rope_rows(FloatTensor& t, int head_dim) {
  const int64_t cols = t.shape.size() > 1 ? t.shape[1] : 1;
  const int64_t heads = t.shape[0] / head_dim;
  const int half = head_dim / 2;
  std::vector<float> hf(t.data.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int s = 0; s < 2; ++s)
      for (int i = 0; i < half; ++i) {
        const float* src = t.data.data() + (h * head_dim + 2 * i + s) * cols;
        std::copy(src, src + cols, hf.data() + (h * head_dim + s * half + i) * cols);
      }
  t.data = std::move(hf);
}

class GgufLoader {
 public:
  explicit GgufLoader(const std::filesystem::path& path) : gguf_(path) {}

  const GgufFile& file() const { return gguf_; }

  FloatTensor load(const std::string& name, const std::vector<int64_t>& expected_shape) {
    const GgufTensor& t = gguf_.tensor(name);
    const std::string where = gguf_.path().string() + ": tensor '" + name + "'";
    check_shape(t.shape(), expected_shape, where);
    if (!ggml_can_dequantize(t.type))
      fail(where, ": ggml type ", ggml_type_name(t.type),
           " cannot be dequantized yet");
    ++type_counts_[std::string(ggml_type_name(t.type))];
    return {expected_shape, dequantize(t)};
  }

  // "Q4_1 x210, Q8_0 x1, F32 x61"
  std::string type_summary() const {
    std::ostringstream out;
    bool first = true;
    for (const auto& [type, count] : type_counts_) {
      out << (first ? "" : ", ") << type << " x" << count;
      first = false;
    }
    return out.str();
  }

 private:
  GgufFile gguf_;
  std::map<std::string, int> type_counts_;
};

}  // namespace

LlamaWeights load_gguf_weights(const std::filesystem::path& path, const ProgressFn& progress) {
  GgufLoader loader(path);
  LlamaWeights w;
  w.config = llama_config_from_gguf(loader.file());
  const LlamaConfig& c = w.config;
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const bool permuted = c.architecture == "llama";
  const int total = c.num_hidden_layers + 2;
  auto report = [&](int step, const std::string& what) {
    if (progress) progress(step, total, what);
  };

  report(0, "token embeddings");
  w.tok_embeddings = loader.load("token_embd.weight", {c.vocab_size, hidden});
  w.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    report(i + 1, "layer " + std::to_string(i));
    const std::string p = "blk." + std::to_string(i) + ".";
    LlamaLayerWeights& l = w.layers[i];
    l.attn_norm = loader.load(p + "attn_norm.weight", {hidden});
    l.wq = loader.load(p + "attn_q.weight", {c.q_dim(), hidden});
    l.wk = loader.load(p + "attn_k.weight", {c.kv_dim(), hidden});
    l.wv = loader.load(p + "attn_v.weight", {c.kv_dim(), hidden});
    l.wo = loader.load(p + "attn_output.weight", {hidden, c.q_dim()});
    if (c.attention_bias) {
      l.bq = loader.load(p + "attn_q.bias", {c.q_dim()});
      l.bk = loader.load(p + "attn_k.bias", {c.kv_dim()});
      l.bv = loader.load(p + "attn_v.bias", {c.kv_dim()});
    }
    if (permuted) {
      unpermute_rope_rows(l.wq, c.head_dim);
      unpermute_rope_rows(l.wk, c.head_dim);
    }
    l.ffn_norm = loader.load(p + "ffn_norm.weight", {hidden});
    l.w_gate = loader.load(p + "ffn_gate.weight", {inter, hidden});
    l.w_up = loader.load(p + "ffn_up.weight", {inter, hidden});
    l.w_down = loader.load(p + "ffn_down.weight", {hidden, inter});
  }
  report(total - 1, "output");
  w.final_norm = loader.load("output_norm.weight", {hidden});
  if (!c.tie_word_embeddings) w.lm_head = loader.load("output.weight", {c.vocab_size, hidden});
  report(total, "done");
  w.source_description = "GGUF " + path.filename().string() + " (" + loader.type_summary() +
                         "; dequantized to float32" + (permuted ? ", q/k rows unpermuted" : "") + ")";
  return w;
}

}  // namespace fireq::model
