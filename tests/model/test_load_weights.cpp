#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "../io/gguf_builder.h"
#include "../io/test_util.h"
#include "fireq/gguf.h"
#include "fireq/model.h"
#include "fireq/numerics.h"
#include "fireq/safetensors.h"

namespace fireq {
namespace {

using fireq::testing::error_of;
using fireq::testing::GgufBuilder;
using fireq::testing::gguf_float;
using fireq::testing::gguf_int;
using fireq::testing::gguf_string;
using fireq::testing::gguf_string_array;
using fireq::testing::random_ggml_blocks;
using fireq::testing::rng;
using ::testing::HasSubstr;

// A tiny Llama: GQA 2:1, head_dim 16, K = 64 (two 32-element ggml blocks per row).
constexpr int kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kInter = 96, kLayers = 2, kVocab = 40;
constexpr double kTheta = 10000.0;

std::vector<float> random_floats(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng());
  return v;
}

std::string float_bytes(const std::vector<float>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)};
}

// llama.cpp's converter, written from its definition: rows reshaped to (heads, 2, d/2), the last
// two axes swapped, reshaped back. Row h*d + s*d/2 + i moves to h*d + 2i + s.
std::vector<float> permute_like_llama_cpp(const std::vector<float>& w, int heads, int cols) {
  std::vector<float> out(w.size());
  const int half = kHeadDim / 2;
  for (int h = 0; h < heads; ++h)
    for (int s = 0; s < 2; ++s)
      for (int i = 0; i < half; ++i)
        std::memcpy(&out[static_cast<size_t>((h * kHeadDim + 2 * i + s) * cols)],
                    &w[static_cast<size_t>((h * kHeadDim + s * half + i) * cols)], cols * sizeof(float));
  return out;
}

enum class RopePairs { kRotateHalf, kAdjacent };

// Projects x [tokens, hidden] with w [heads*d, hidden] and applies RoPE at positions 0..tokens-1.
std::vector<double> project_and_rotate(const std::vector<float>& w, int heads, const std::vector<float>& x,
                                       int tokens, RopePairs pairs) {
  std::vector<double> out(static_cast<size_t>(tokens * heads * kHeadDim));
  for (int t = 0; t < tokens; ++t)
    for (int r = 0; r < heads * kHeadDim; ++r) {
      double acc = 0;
      for (int c = 0; c < kHidden; ++c) acc += double{w[r * kHidden + c]} * x[t * kHidden + c];
      out[t * heads * kHeadDim + r] = acc;
    }
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h) {
      double* v = &out[(t * heads + h) * kHeadDim];
      for (int i = 0; i < kHeadDim / 2; ++i) {
        const double angle = t * std::pow(kTheta, -2.0 * i / kHeadDim);
        const int a = pairs == RopePairs::kRotateHalf ? i : 2 * i;
        const int b = pairs == RopePairs::kRotateHalf ? i + kHeadDim / 2 : 2 * i + 1;
        const double va = v[a], vb = v[b];
        v[a] = va * std::cos(angle) - vb * std::sin(angle);
        v[b] = vb * std::cos(angle) + va * std::sin(angle);
      }
    }
  return out;
}

// Attention logits q_h(t1) . k_{h / group}(t2) for every head and token pair.
std::vector<double> attention_scores(const std::vector<float>& wq, const std::vector<float>& wk,
                                     const std::vector<float>& x, int tokens, RopePairs pairs) {
  const auto q = project_and_rotate(wq, kHeads, x, tokens, pairs);
  const auto k = project_and_rotate(wk, kKvHeads, x, tokens, pairs);
  std::vector<double> scores;
  for (int h = 0; h < kHeads; ++h)
    for (int t1 = 0; t1 < tokens; ++t1)
      for (int t2 = 0; t2 < tokens; ++t2) {
        double s = 0;
        for (int d = 0; d < kHeadDim; ++d)
          s += q[(t1 * kHeads + h) * kHeadDim + d] * k[(t2 * kKvHeads + h / (kHeads / kKvHeads)) * kHeadDim + d];
        scores.push_back(s);
      }
  return scores;
}

double max_abs_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(RopePermutation, AdjacentPairRopeOnPermutedWeightsEqualsRotateHalfOnHfWeights) {
  const auto wq = random_floats(kHeads * kHeadDim * kHidden), wk = random_floats(kKvHeads * kHeadDim * kHidden);
  const int tokens = 7;
  const auto x = random_floats(tokens * kHidden);
  const auto hf = attention_scores(wq, wk, x, tokens, RopePairs::kRotateHalf);
  const auto gguf = attention_scores(permute_like_llama_cpp(wq, kHeads, kHidden),
                                     permute_like_llama_cpp(wk, kKvHeads, kHidden), x, tokens, RopePairs::kAdjacent);
  EXPECT_LT(max_abs_difference(hf, gguf), 1e-9);
  // The control: adjacent-pair RoPE on unpermuted weights is a different model.
  EXPECT_GT(max_abs_difference(hf, attention_scores(wq, wk, x, tokens, RopePairs::kAdjacent)), 1e-2);
}

// The tiny model as llama.cpp would write it; keeps the HF-layout q/k for comparison.
struct TinyGguf {
  GgufBuilder builder;
  std::vector<std::vector<float>> hf_wq, hf_wk;
};

// Qwen2 GGUFs keep q/k in HF order (llama.cpp runs them with rotate_half RoPE) and add q/k/v biases.
TinyGguf make_tiny_gguf(bool tied, const std::string& arch = "llama") {
  TinyGguf m;
  GgufBuilder& b = m.builder;
  const bool qwen2 = arch == "qwen2";
  b.add("general.architecture", gguf_string(arch));
  b.add(arch + ".embedding_length", gguf_int(GgufType::UINT32, kHidden));
  b.add(arch + ".block_count", gguf_int(GgufType::UINT32, kLayers));
  b.add(arch + ".feed_forward_length", gguf_int(GgufType::UINT32, kInter));
  b.add(arch + ".attention.head_count", gguf_int(GgufType::UINT32, kHeads));
  b.add(arch + ".attention.head_count_kv", gguf_int(GgufType::UINT32, kKvHeads));
  b.add(arch + ".attention.layer_norm_rms_epsilon", gguf_float(GgufType::FLOAT32, 1e-5));
  b.add(arch + ".rope.freq_base", gguf_float(GgufType::FLOAT32, 100000.0));
  b.add(arch + ".context_length", gguf_int(GgufType::UINT32, 2048));
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back(std::to_string(i) + "_token");
  b.add("tokenizer.ggml.tokens", gguf_string_array(tokens));
  b.add("tokenizer.ggml.bos_token_id", gguf_int(GgufType::UINT32, 1));
  b.add("tokenizer.ggml.eos_token_id", gguf_int(GgufType::UINT32, 2));

  auto u = [](int v) { return static_cast<uint64_t>(v); };
  b.add_tensor("token_embd.weight", GgmlType::Q8_0, {u(kHidden), u(kVocab)}, random_ggml_blocks(GgmlType::Q8_0, kVocab * kHidden / 32));
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    m.hf_wq.push_back(random_floats(kHeads * kHeadDim * kHidden));
    m.hf_wk.push_back(random_floats(kKvHeads * kHeadDim * kHidden));
    b.add_tensor(p + "attn_norm.weight", GgmlType::F32, {u(kHidden)}, float_bytes(random_floats(kHidden)));
    b.add_tensor(p + "attn_q.weight", GgmlType::F32, {u(kHidden), u(kHeads * kHeadDim)},
                 float_bytes(qwen2 ? m.hf_wq.back() : permute_like_llama_cpp(m.hf_wq.back(), kHeads, kHidden)));
    b.add_tensor(p + "attn_k.weight", GgmlType::F32, {u(kHidden), u(kKvHeads * kHeadDim)},
                 float_bytes(qwen2 ? m.hf_wk.back() : permute_like_llama_cpp(m.hf_wk.back(), kKvHeads, kHidden)));
    if (qwen2) {
      b.add_tensor(p + "attn_q.bias", GgmlType::F32, {u(kHeads * kHeadDim)}, float_bytes(random_floats(kHeads * kHeadDim)));
      b.add_tensor(p + "attn_k.bias", GgmlType::F32, {u(kKvHeads * kHeadDim)}, float_bytes(random_floats(kKvHeads * kHeadDim)));
      b.add_tensor(p + "attn_v.bias", GgmlType::F32, {u(kKvHeads * kHeadDim)}, float_bytes(random_floats(kKvHeads * kHeadDim)));
    }
    b.add_tensor(p + "attn_v.weight", GgmlType::Q4_1, {u(kHidden), u(kKvHeads * kHeadDim)},
                 random_ggml_blocks(GgmlType::Q4_1, kKvHeads * kHeadDim * kHidden / 32));
    b.add_tensor(p + "attn_output.weight", GgmlType::Q4_0, {u(kHeads * kHeadDim), u(kHidden)},
                 random_ggml_blocks(GgmlType::Q4_0, kHeads * kHeadDim * kHidden / 32));
    b.add_tensor(p + "ffn_norm.weight", GgmlType::F32, {u(kHidden)}, float_bytes(random_floats(kHidden)));
    b.add_tensor(p + "ffn_gate.weight", GgmlType::Q4_1, {u(kHidden), u(kInter)}, random_ggml_blocks(GgmlType::Q4_1, kInter * kHidden / 32));
    b.add_tensor(p + "ffn_up.weight", GgmlType::Q5_0, {u(kHidden), u(kInter)}, random_ggml_blocks(GgmlType::Q5_0, kInter * kHidden / 32));
    b.add_tensor(p + "ffn_down.weight", GgmlType::Q8_0, {u(kInter), u(kHidden)}, random_ggml_blocks(GgmlType::Q8_0, kInter * kHidden / 32));
  }
  b.add_tensor("output_norm.weight", GgmlType::F32, {u(kHidden)}, float_bytes(random_floats(kHidden)));
  if (!tied)
    b.add_tensor("output.weight", GgmlType::Q4_1, {u(kHidden), u(kVocab)}, random_ggml_blocks(GgmlType::Q4_1, kVocab * kHidden / 32));
  return m;
}

class LoadWeights : public fireq::testing::TempDirTest {};

void expect_equal(const FloatTensor& loaded, const std::vector<float>& expected, const std::string& what) {
  ASSERT_EQ(loaded.data.size(), expected.size()) << what;
  for (size_t i = 0; i < expected.size(); ++i)
    ASSERT_EQ(float_bits(loaded.data[i]), float_bits(expected[i])) << what << " element " << i;
}

TEST_F(LoadWeights, GgufConfigTensorsAndUndonePermutation) {
  for (const bool tied : {true, false}) {
    const TinyGguf m = make_tiny_gguf(tied);
    fireq::testing::write_bytes(path("tiny.gguf"), m.builder.build());
    std::vector<int> steps;
    const LlamaWeights w = load_llama_weights(path("tiny.gguf"), [&](int step, int total, const std::string&) {
      EXPECT_EQ(total, kLayers + 2);
      steps.push_back(step);
    });
    EXPECT_EQ(steps, (std::vector<int>{0, 1, 2, 3, 4}));

    const LlamaConfig& c = w.config;
    EXPECT_EQ(c.hidden_size, kHidden);
    EXPECT_EQ(c.num_hidden_layers, kLayers);
    EXPECT_EQ(c.num_attention_heads, kHeads);
    EXPECT_EQ(c.num_key_value_heads, kKvHeads);
    EXPECT_EQ(c.head_dim, kHeadDim);
    EXPECT_EQ(c.intermediate_size, kInter);
    EXPECT_EQ(c.vocab_size, kVocab);
    EXPECT_EQ(c.max_position_embeddings, 2048);
    EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
    EXPECT_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    EXPECT_EQ(c.tie_word_embeddings, tied);
    EXPECT_EQ(c.bos_token_id, 1);
    EXPECT_EQ(c.eos_token_id, 2);
    EXPECT_THAT(w.source_description, HasSubstr("Q4_1"));
    EXPECT_THAT(w.source_description, HasSubstr("dequantized"));

    const GgufFile gguf(path("tiny.gguf"));
    expect_equal(w.tok_embeddings, dequantize(gguf.tensor("token_embd.weight")), "token_embd");
    EXPECT_EQ(w.tok_embeddings.shape, (std::vector<int64_t>{kVocab, kHidden}));
    ASSERT_EQ(w.layers.size(), static_cast<size_t>(kLayers));
    for (int i = 0; i < kLayers; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      const LlamaLayerWeights& l = w.layers[i];
      expect_equal(l.wq, m.hf_wq[i], p + "attn_q back in HF layout");
      expect_equal(l.wk, m.hf_wk[i], p + "attn_k back in HF layout");
      expect_equal(l.wv, dequantize(gguf.tensor(p + "attn_v.weight")), p + "attn_v");
      expect_equal(l.wo, dequantize(gguf.tensor(p + "attn_output.weight")), p + "attn_output");
      expect_equal(l.w_gate, dequantize(gguf.tensor(p + "ffn_gate.weight")), p + "ffn_gate");
      expect_equal(l.w_up, dequantize(gguf.tensor(p + "ffn_up.weight")), p + "ffn_up");
      expect_equal(l.w_down, dequantize(gguf.tensor(p + "ffn_down.weight")), p + "ffn_down");
      expect_equal(l.attn_norm, dequantize(gguf.tensor(p + "attn_norm.weight")), p + "attn_norm");
      expect_equal(l.ffn_norm, dequantize(gguf.tensor(p + "ffn_norm.weight")), p + "ffn_norm");
      EXPECT_EQ(l.wo.shape, (std::vector<int64_t>{kHidden, kHeads * kHeadDim}));
      EXPECT_EQ(l.w_down.shape, (std::vector<int64_t>{kHidden, kInter}));
      EXPECT_TRUE(l.bq.empty());

      // The loaded weights with HF RoPE give the attention the GGUF file's own RoPE gives.
      const int tokens = 5;
      const auto x = random_floats(tokens * kHidden);
      const auto gguf_q = dequantize(gguf.tensor(p + "attn_q.weight"));
      const auto gguf_k = dequantize(gguf.tensor(p + "attn_k.weight"));
      EXPECT_LT(max_abs_difference(attention_scores(l.wq.data, l.wk.data, x, tokens, RopePairs::kRotateHalf),
                                   attention_scores(gguf_q, gguf_k, x, tokens, RopePairs::kAdjacent)),
                1e-9);
    }
    expect_equal(w.final_norm, dequantize(gguf.tensor("output_norm.weight")), "output_norm");
    if (tied) {
      EXPECT_TRUE(w.lm_head.empty());
      EXPECT_EQ(&w.output_weight(), &w.tok_embeddings);
    } else {
      expect_equal(w.lm_head, dequantize(gguf.tensor("output.weight")), "output");
    }
  }
}

TEST_F(LoadWeights, Qwen2GgufKeepsRowOrderAndLoadsBiases) {
  const TinyGguf m = make_tiny_gguf(true, "qwen2");
  fireq::testing::write_bytes(path("qwen.gguf"), m.builder.build());
  const LlamaWeights w = load_llama_weights(path("qwen.gguf"));
  EXPECT_EQ(w.config.architecture, "qwen2");
  EXPECT_TRUE(w.config.attention_bias);
  EXPECT_THAT(w.source_description, ::testing::Not(HasSubstr("unpermuted")));
  const GgufFile gguf(path("qwen.gguf"));
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    expect_equal(w.layers[i].wq, m.hf_wq[i], p + "attn_q");
    expect_equal(w.layers[i].wk, m.hf_wk[i], p + "attn_k");
    expect_equal(w.layers[i].bq, dequantize(gguf.tensor(p + "attn_q.bias")), p + "attn_q.bias");
    expect_equal(w.layers[i].bk, dequantize(gguf.tensor(p + "attn_k.bias")), p + "attn_k.bias");
    expect_equal(w.layers[i].bv, dequantize(gguf.tensor(p + "attn_v.bias")), p + "attn_v.bias");
  }
}

TEST_F(LoadWeights, GgufErrorsNameFileAndTensor) {
  TinyGguf m = make_tiny_gguf(true);
  m.builder.tensors.erase(m.builder.tensors.begin() + 3);  // blk.0.attn_k.weight
  fireq::testing::write_bytes(path("missing.gguf"), m.builder.build());
  std::string message = error_of([&] { load_llama_weights(path("missing.gguf")); });
  EXPECT_THAT(message, HasSubstr(path("missing.gguf").string()));
  EXPECT_THAT(message, HasSubstr("no tensor named 'blk.0.attn_k.weight'"));

  m = make_tiny_gguf(true);
  m.builder.tensors[2].dims = {kHidden, 32};  // blk.0.attn_q.weight with too few rows
  m.builder.tensors[2].bytes.resize(32 * kHidden * 4);
  fireq::testing::write_bytes(path("shape.gguf"), m.builder.build());
  message = error_of([&] { load_llama_weights(path("shape.gguf")); });
  EXPECT_THAT(message, HasSubstr("tensor 'blk.0.attn_q.weight': shape [32, 64] does not match the config's [64, 64]"));

  m = make_tiny_gguf(true);
  m.builder.metadata[0].second = gguf_string("gpt2");
  fireq::testing::write_bytes(path("arch.gguf"), m.builder.build());
  EXPECT_THAT(error_of([&] { load_llama_weights(path("arch.gguf")); }),
              HasSubstr("general.architecture 'gpt2' is not supported"));

  EXPECT_THAT(error_of([&] { load_llama_weights(path("nothing.gguf")); }), HasSubstr("no such file"));
  fireq::testing::write_bytes(path("random.bin"), "not a model");
  EXPECT_THAT(error_of([&] { load_llama_weights(path("random.bin")); }), HasSubstr("not a GGUF file"));
}

// A tiny HF checkpoint: config.json plus (optionally sharded) safetensors in `dtype`.
struct TinyHf {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<std::byte>> bytes;
};

TinyHf write_tiny_hf(const std::filesystem::path& dir, DType dtype, bool tied, uint64_t shard_bytes,
                     bool qwen2 = false) {
  nlohmann::json config = {{"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
                           {"model_type", qwen2 ? "qwen2" : "llama"},
                           {"hidden_size", kHidden}, {"intermediate_size", kInter},
                           {"num_hidden_layers", kLayers}, {"num_attention_heads", kHeads},
                           {"num_key_value_heads", kKvHeads}, {"vocab_size", kVocab},
                           {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
                           {"tie_word_embeddings", tied}, {"bos_token_id", 1}, {"eos_token_id", {2, 3}}};
  std::filesystem::create_directories(dir);
  fireq::testing::write_bytes(dir / "config.json", config.dump());
  TinyHf m;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    const auto values = random_floats(static_cast<size_t>(n));
    std::vector<std::byte> b(static_cast<size_t>(n) * dtype_size(dtype));
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == DType::F32) std::memcpy(&b[4 * i], &values[i], 4);
      else {
        const uint16_t h = bf16_from_float(values[i]);
        std::memcpy(&b[2 * i], &h, 2);
      }
    }
    m.names.push_back(name);
    m.shapes.push_back(std::move(shape));
    m.bytes.push_back(std::move(b));
  };
  add("model.embed_tokens.weight", {kVocab, kHidden});
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {kHidden});
    add(p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden});
    add(p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden});
    add(p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden});
    add(p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim});
    if (qwen2) {
      add(p + "self_attn.q_proj.bias", {kHeads * kHeadDim});
      add(p + "self_attn.k_proj.bias", {kKvHeads * kHeadDim});
      add(p + "self_attn.v_proj.bias", {kKvHeads * kHeadDim});
    }
    add(p + "post_attention_layernorm.weight", {kHidden});
    add(p + "mlp.gate_proj.weight", {kInter, kHidden});
    add(p + "mlp.up_proj.weight", {kInter, kHidden});
    add(p + "mlp.down_proj.weight", {kHidden, kInter});
  }
  add("model.norm.weight", {kHidden});
  if (!tied) add("lm_head.weight", {kVocab, kHidden});
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < m.names.size(); ++i) tensors.push_back({m.names[i], dtype, m.shapes[i], m.bytes[i]});
  write_safetensors_checkpoint(dir, tensors, {{"format", "pt"}}, shard_bytes);
  return m;
}

TEST_F(LoadWeights, HfSafetensorsSingleAndSharded) {
  struct Case {
    DType dtype;
    bool tied;
    uint64_t shard_bytes;
  };
  for (const Case& c : {Case{DType::BF16, false, 40000}, Case{DType::F32, true, 1ull << 30}}) {
    const std::filesystem::path dir = path(std::string(dtype_name(c.dtype)));
    const TinyHf m = write_tiny_hf(dir, c.dtype, c.tied, c.shard_bytes);
    int calls = 0;
    const LlamaWeights w = load_llama_weights(dir, [&](int, int, const std::string&) { ++calls; });
    EXPECT_EQ(calls, kLayers + 3);
    EXPECT_EQ(w.config.eos_token_ids, (std::vector<int>{2, 3}));
    EXPECT_EQ(w.config.tie_word_embeddings, c.tied);
    EXPECT_THAT(w.source_description, HasSubstr(std::string(dtype_name(c.dtype))));
    const SafetensorsCheckpoint checkpoint(dir);
    if (c.dtype == DType::BF16) {
      EXPECT_GT(checkpoint.shards().size(), 1u);
    }
    auto expect_loaded = [&](const FloatTensor& t, const std::string& name) {
      expect_equal(t, tensor_to_float(checkpoint.at(name)), name);
    };
    expect_loaded(w.tok_embeddings, "model.embed_tokens.weight");
    for (int i = 0; i < kLayers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      const LlamaLayerWeights& l = w.layers[i];
      expect_loaded(l.attn_norm, p + "input_layernorm.weight");
      expect_loaded(l.wq, p + "self_attn.q_proj.weight");
      expect_loaded(l.wk, p + "self_attn.k_proj.weight");
      expect_loaded(l.wv, p + "self_attn.v_proj.weight");
      expect_loaded(l.wo, p + "self_attn.o_proj.weight");
      expect_loaded(l.ffn_norm, p + "post_attention_layernorm.weight");
      expect_loaded(l.w_gate, p + "mlp.gate_proj.weight");
      expect_loaded(l.w_up, p + "mlp.up_proj.weight");
      expect_loaded(l.w_down, p + "mlp.down_proj.weight");
    }
    expect_loaded(w.final_norm, "model.norm.weight");
    if (c.tied) {
      EXPECT_TRUE(w.lm_head.empty());
    } else {
      expect_loaded(w.lm_head, "lm_head.weight");
    }
  }
}

TEST_F(LoadWeights, Qwen2HfLoadsBiases) {
  write_tiny_hf(dir_, DType::BF16, true, 1ull << 30, /*qwen2=*/true);
  const LlamaWeights w = load_llama_weights(dir_);
  EXPECT_EQ(w.config.architecture, "qwen2");
  const SafetensorsCheckpoint checkpoint(dir_);
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    expect_equal(w.layers[i].bq, tensor_to_float(checkpoint.at(p + "q_proj.bias")), p + "q_proj.bias");
    expect_equal(w.layers[i].bk, tensor_to_float(checkpoint.at(p + "k_proj.bias")), p + "k_proj.bias");
    expect_equal(w.layers[i].bv, tensor_to_float(checkpoint.at(p + "v_proj.bias")), p + "v_proj.bias");
  }
}

TEST_F(LoadWeights, HfErrorsNameFileAndTensor) {
  write_tiny_hf(dir_, DType::BF16, false, 1ull << 30);
  // lm_head missing although the config says untied.
  auto config = nlohmann::json::parse(fireq::testing::read_bytes(path("config.json")));
  write_tiny_hf(path("no_head"), DType::BF16, true, 1ull << 30);
  config["tie_word_embeddings"] = false;
  fireq::testing::write_bytes(path("no_head/config.json"), config.dump());
  std::string message = error_of([&] { load_llama_weights(path("no_head")); });
  EXPECT_THAT(message, HasSubstr("no tensor named 'lm_head.weight'"));

  config["intermediate_size"] = kInter + 32;
  fireq::testing::write_bytes(path("config.json"), config.dump());
  message = error_of([&] { load_llama_weights(dir_); });
  EXPECT_THAT(message, HasSubstr("model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight': shape [96, 64]"));

  config["intermediate_size"] = kInter;
  config["quantization_config"] = {{"quant_method", "fireq"}};
  fireq::testing::write_bytes(path("config.json"), config.dump());
  EXPECT_THAT(error_of([&] { load_llama_weights(dir_); }), HasSubstr("quant_method 'fireq'"));

  std::filesystem::remove(path("config.json"));
  EXPECT_THAT(error_of([&] { load_llama_weights(dir_); }), HasSubstr("no config.json"));

  const std::vector<std::byte> ints(4 * kHidden);
  std::vector<TensorToWrite> bad = {{"model.embed_tokens.weight", DType::I32, {kHidden}, ints}};
  write_tiny_hf(path("ints"), DType::F32, true, 1ull << 30);
  write_safetensors(path("ints/model.safetensors"), bad);
  EXPECT_THAT(error_of([&] { load_llama_weights(path("ints")); }),
              HasSubstr("tensor 'model.embed_tokens.weight': dtype I32 is not a float checkpoint dtype"));
}

double standard_deviation(const std::vector<float>& v) {
  double sum = 0, sum_sq = 0;
  for (const float x : v) {
    sum += x;
    sum_sq += double{x} * x;
  }
  const double mean = sum / v.size();
  return std::sqrt(std::max(0.0, sum_sq / v.size() - mean * mean));
}

TEST(LoadRealModel, SmolLM2Gguf) {
  const std::filesystem::path model =
      std::filesystem::path(FIREQ_SOURCE_DIR) / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not present (run scripts/setup.sh)";
  int last_step = -1;
  const LlamaWeights w = load_llama_weights(model, [&](int step, int, const std::string&) { last_step = step; });
  const LlamaConfig& c = w.config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(last_step, 32);
  EXPECT_THAT(w.source_description, HasSubstr("Q4_1 x210, Q8_0 x1"));

  auto check = [](const FloatTensor& t, const std::string& name, double min_std, double max_std) {
    for (const float x : t.data) ASSERT_TRUE(std::isfinite(x)) << name;
    const double sd = standard_deviation(t.data);
    EXPECT_GT(sd, min_std) << name;
    EXPECT_LT(sd, max_std) << name;
  };
  check(w.tok_embeddings, "token_embd", 0.01, 1.0);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayerWeights& l = w.layers[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    for (const auto* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) check(*t, p + "linear", 0.005, 1.0);
    for (const auto* t : {&l.attn_norm, &l.ffn_norm}) {
      for (const float x : t->data) ASSERT_TRUE(std::isfinite(x)) << p << "norm";
      EXPECT_GT(standard_deviation(t->data) + std::abs(t->data[0]), 0.0) << p << "norm";
    }
  }
  check(w.final_norm, "output_norm", 0.0, 10.0);
}

}  // namespace
}  // namespace fireq
