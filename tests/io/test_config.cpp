// config.json parsing on configs shaped like the real ones (fields as published with the models).
#include <algorithm>
#include <cmath>
#include <numbers>

#include "fireq/config.h"
#include "fireq/gguf.h"
#include "gguf_builder.h"
#include "test_util.h"

namespace fireq {
namespace {

using fireq::testing::error_of;
using ::testing::HasSubstr;

constexpr const char* kLlama2_7B = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
  "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})";

constexpr const char* kLlama3_8B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0", "use_cache": true, "vocab_size": 128256})";

constexpr const char* kLlama31_8B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

constexpr const char* kSmolLM2_135M = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
  "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152})";

constexpr const char* kQwen2_0_5B = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

TEST(Config, Llama2_7B) {
  const LlamaConfig c = parse_llama_config(kLlama2_7B, "llama2/config.json");
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.gqa_group(), 1);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // absent: the Llama default
  EXPECT_FALSE(c.rope_scaling.enabled);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
}

TEST(Config, Llama3_8B_Gqa) {
  const LlamaConfig c = parse_llama_config(kLlama3_8B, "llama3/config.json");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.gqa_group(), 4);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_FALSE(c.rope_scaling.enabled);
}

TEST(Config, Llama31_8B_Llama3RopeScalingAndEosList) {
  const LlamaConfig c = parse_llama_config(kLlama31_8B, "llama31/config.json");
  EXPECT_TRUE(c.rope_scaling.enabled);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.eos_token_id, 128001);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
}

TEST(Config, Llama3RopeScalingWithOldTypeSpelling) {
  std::string text = kLlama31_8B;
  text.replace(text.find("\"rope_type\""), 11, "\"type\"");
  EXPECT_TRUE(parse_llama_config(text, "c.json").rope_scaling.enabled);
}

TEST(Config, SmolLM2_135M) {
  const LlamaConfig c = parse_llama_config(kSmolLM2_135M, "smol/config.json");
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);  // an integer in the JSON
}

TEST(Config, Qwen2HasAttentionBiases) {
  const LlamaConfig c = parse_llama_config(kQwen2_0_5B, "qwen/config.json");
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.gqa_group(), 7);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
}

TEST(Config, ExplicitHeadDimOverridesTheDefault) {
  std::string text = kLlama3_8B;
  text.insert(1, "\"head_dim\": 64, ");
  EXPECT_EQ(parse_llama_config(text, "c.json").head_dim, 64);
}

// Replaces the first occurrence of `from` in `base` with `to`.
std::string edit(const std::string& base, const std::string& from, const std::string& to) {
  std::string text = base;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

TEST(Config, RefusesUnsupportedModels) {
  struct Case {
    std::string text;
    const char* problem;
  };
  const std::string base = kLlama3_8B;
  const Case cases[] = {
      {edit(base, "\"model_type\": \"llama\"", "\"model_type\": \"mistral\""), "unsupported model_type 'mistral'"},
      {edit(edit(base, "\"model_type\": \"llama\",", ""), "LlamaForCausalLM", "GPT2LMHeadModel"),
       "unsupported architecture 'GPT2LMHeadModel'"},
      {edit(base, "\"rope_scaling\": null", R"("rope_scaling": {"type": "linear", "factor": 2.0})"),
       "rope_scaling type 'linear' is not supported"},
      {edit(base, "\"rope_scaling\": null", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})"),
       "rope_scaling type 'yarn'"},
      {edit(base, "\"rope_scaling\": null", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})"),
       "rope_scaling llama3 needs"},
      {edit(base, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""), "hidden_act 'gelu'"},
      {edit(base, "\"attention_bias\": false", "\"mlp_bias\": true"), "mlp_bias"},
      {edit(base, "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5"), "not a multiple of num_key_value_heads"},
      {edit(base, "\"hidden_size\": 4096,", ""), "missing required field 'hidden_size'"},
      {edit(base, "\"vocab_size\": 128256", "\"vocab_size\": \"big\""), "field 'vocab_size' must be an integer"},
      {edit(base, "\"vocab_size\": 128256", "\"vocab_size\": 0"), "vocab_size must be positive"},
      {edit(base, "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": 1"), "tie_word_embeddings"},
      {"[1, 2]", "not a JSON object"},
      {"{\"model_type\": ", "not valid JSON"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of([&] { parse_llama_config(c.text, "bad/config.json"); });
    EXPECT_THAT(message, HasSubstr("bad/config.json")) << c.problem;
    EXPECT_THAT(message, HasSubstr(c.problem));
  }
}

TEST(Config, MissingFileIsAnError) {
  EXPECT_THAT(error_of([] { load_llama_config("/nonexistent/config.json"); }),
              HasSubstr("/nonexistent/config.json: cannot open"));
}

// A Llama-3.1-8B-shaped GGUF header (no weights needed for the config) with rope_freqs.weight as
// llama.cpp's converter computes it from factor 8, low 1, high 4, original context 8192.
class GgufConfig : public fireq::testing::TempDirTest {
 protected:
  static std::vector<float> converter_rope_factors(double theta, int head_dim) {
    std::vector<float> factors;
    const double factor = 8.0, low = 1.0, high = 4.0, original = 8192.0;
    for (int i = 0; i < head_dim; i += 2) {
      const double wavelength = 2.0 * std::numbers::pi * std::pow(theta, static_cast<double>(i) / head_dim);
      if (wavelength < original / high) factors.push_back(1.0f);
      else if (wavelength > original / low) factors.push_back(static_cast<float>(factor));
      else {
        const double smooth = (original / wavelength - low) / (high - low);
        factors.push_back(static_cast<float>(1.0 / ((1.0 - smooth) / factor + smooth)));
      }
    }
    return factors;
  }

  fireq::testing::GgufBuilder llama31(const std::vector<float>& rope_factors) {
    using namespace fireq::testing;
    GgufBuilder b;
    b.add("general.architecture", gguf_string("llama"));
    b.add("llama.embedding_length", gguf_int(GgufType::UINT32, 4096));
    b.add("llama.block_count", gguf_int(GgufType::UINT32, 32));
    b.add("llama.feed_forward_length", gguf_int(GgufType::UINT32, 14336));
    b.add("llama.attention.head_count", gguf_int(GgufType::UINT32, 32));
    b.add("llama.attention.head_count_kv", gguf_int(GgufType::UINT32, 8));
    b.add("llama.attention.layer_norm_rms_epsilon", gguf_float(GgufType::FLOAT32, 1e-5));
    b.add("llama.rope.freq_base", gguf_float(GgufType::FLOAT32, 500000.0));
    b.add("llama.context_length", gguf_int(GgufType::UINT32, 131072));
    b.add("llama.vocab_size", gguf_int(GgufType::UINT32, 128256));
    b.add("tokenizer.ggml.bos_token_id", gguf_int(GgufType::UINT32, 128000));
    b.add_tensor("rope_freqs.weight", GgmlType::F32, {rope_factors.size()},
                 std::string(reinterpret_cast<const char*>(rope_factors.data()), rope_factors.size() * 4));
    return b;
  }
};

TEST_F(GgufConfig, Llama31RopeFactorsBecomeLlama3Scaling) {
  fireq::testing::write_bytes(path("l31.gguf"), llama31(converter_rope_factors(500000.0, 128)).build());
  const LlamaConfig c = llama_config_from_gguf(GgufFile(path("l31.gguf")));
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.gqa_group(), 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_TRUE(c.tie_word_embeddings);  // this header-only file has no output.weight
  ASSERT_TRUE(c.rope_scaling.enabled);
  EXPECT_NEAR(c.rope_scaling.factor, 8.0, 1e-6);
  EXPECT_NEAR(c.rope_scaling.low_freq_factor, 1.0, 1e-3);
  EXPECT_NEAR(c.rope_scaling.high_freq_factor, 4.0, 1e-3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
}

TEST_F(GgufConfig, RefusesMixtureOfExpertsAndPartialRotary) {
  auto b = llama31(std::vector<float>(64, 1.0f));
  b.add("llama.expert_count", fireq::testing::gguf_int(GgufType::UINT32, 8));
  fireq::testing::write_bytes(path("moe.gguf"), b.build());
  EXPECT_THAT(error_of([&] { llama_config_from_gguf(GgufFile(path("moe.gguf"))); }),
              HasSubstr("mixture-of-experts models (llama.expert_count 8)"));

  b = llama31(std::vector<float>(64, 1.0f));
  b.add("llama.rope.dimension_count", fireq::testing::gguf_int(GgufType::UINT32, 64));
  fireq::testing::write_bytes(path("partial.gguf"), b.build());
  EXPECT_THAT(error_of([&] { llama_config_from_gguf(GgufFile(path("partial.gguf"))); }),
              HasSubstr("partial rotary embeddings (llama.rope.dimension_count 64 of head_dim 128)"));
}

TEST_F(GgufConfig, AllOnesRopeFactorsMeanNoScaling) {
  fireq::testing::write_bytes(path("ones.gguf"), llama31(std::vector<float>(64, 1.0f)).build());
  EXPECT_FALSE(llama_config_from_gguf(GgufFile(path("ones.gguf"))).rope_scaling.enabled);
}

TEST_F(GgufConfig, RefusesRopeFactorsOfAnotherShape) {
  std::vector<float> factors = converter_rope_factors(500000.0, 128);
  factors[3] = 2.5f;  // a high frequency that llama3 never scales
  fireq::testing::write_bytes(path("odd.gguf"), llama31(factors).build());
  const std::string message = error_of([&] { llama_config_from_gguf(GgufFile(path("odd.gguf"))); });
  EXPECT_THAT(message, HasSubstr("odd.gguf: tensor 'rope_freqs.weight': factor "));
  EXPECT_THAT(message, HasSubstr("does not follow the llama3"));

  std::vector<float> reversed = converter_rope_factors(500000.0, 128);
  std::reverse(reversed.begin() + 25, reversed.begin() + 40);  // transitional values in the wrong order
  fireq::testing::write_bytes(path("reversed.gguf"), llama31(reversed).build());
  EXPECT_THAT(error_of([&] { llama_config_from_gguf(GgufFile(path("reversed.gguf"))); }),
              HasSubstr("do not follow the llama3"));

  std::vector<float> ramp(64);
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = i < 63 ? 1.0f : 8.0f;
  fireq::testing::write_bytes(path("step.gguf"), llama31(ramp).build());
  EXPECT_THAT(error_of([&] { llama_config_from_gguf(GgufFile(path("step.gguf"))); }),
              HasSubstr("too few transitional frequencies"));
}

}  // namespace
}  // namespace fireq
