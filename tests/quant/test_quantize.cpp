#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "fireq/error.h"
#include "fireq/quant.h"
#include "fireq/tokenizer.h"
#include "tiny_model.h"

namespace fireq {
namespace {
namespace fs = std::filesystem;

QuantRecipe tiny_fireq_recipe() {
  QuantRecipe r = load_recipe("fireq-default");
  r.group_size = 64;
  r.calib_samples = 3;
  r.calib_seq_len = 24;
  r.post_rope_top_k = 2;
  return r;
}

struct QuantModel : ::testing::Test {
  LlamaWeights model = testing::tiny_llama(7);
  std::mt19937 rng{99};
  std::vector<int32_t> calib = testing::random_tokens(3 * 24, 97, rng);
  std::vector<int32_t> eval = testing::random_tokens(40, 97, rng);

  std::vector<float> logits(CpuEngine& engine) {
    engine.reset();
    return engine.forward(eval, LogitsFor::kAll);
  }
  std::vector<float> float_logits() {
    CpuEngine engine(model);
    return logits(engine);
  }
  static double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (a[i] - b[i]) * (a[i] - b[i]);
      den += b[i] * b[i];
    }
    return std::sqrt(num / den);
  }
  fs::path temp_dir(const std::string& name) {
    const fs::path p = fs::temp_directory_path() / ("fireq_quant_test_" + name + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
    fs::remove_all(p);
    return p;
  }
};

TEST_F(QuantModel, NoneRecipeKeepsTheModelUpToBf16Weights) {
  const QuantizedModel q = quantize_model(model, load_recipe("none"), {});
  EvaluationModel sim(q);
  const double err = relative_error(logits(sim.engine()), float_logits());
  EXPECT_GT(err, 0.0);
  EXPECT_LT(err, 0.02);
}

TEST_F(QuantModel, FullFireqStaysCloseToFloatAndEachPartChangesTheNumerics) {
  const std::vector<float> reference = float_logits();
  QuantRecipe recipe = tiny_fireq_recipe();
  std::vector<std::string> log;
  const QuantizedModel q = quantize_model(model, recipe, calib, [&](const std::string& s) { log.push_back(s); });
  ASSERT_EQ(log.size(), 2u);
  EXPECT_NE(log[1].find("layer 2/2"), std::string::npos);
  EXPECT_NE(log[1].find("ETA"), std::string::npos);
  EvaluationModel sim(q);
  const double err = relative_error(logits(sim.engine()), reference);
  EXPECT_GT(err, 1e-3);  // quantization happened
  EXPECT_LT(err, 0.5);  // a random model with hidden 64 and head_dim 16 is a hard case
  for (const QuantizedLayer& layer : q.layers) {
    EXPECT_TRUE(layer.linears[0].is_int4);
    EXPECT_EQ(layer.post_rope_scale.size(), 32u);
    EXPECT_EQ(layer.post_rope_channels.size(), 2u * 4u);
    EXPECT_EQ(layer.qkv_input_absmax.size(), 64u);
    EXPECT_EQ(layer.down_input_absmax.size(), 128u);
  }
}

// After folding, the calibration keys of each block have pair norms <= alpha (= alpha at the
// maximum) on the pairs pre-RoPE scaling covers and |k| = beta on the post-RoPE channels, up to
// the INT4 weights' error. Block 1 is observed on the output of the quantized block 0.
TEST_F(QuantModel, CalibratedKeysReachAlphaAndBeta) {
  QuantRecipe recipe = tiny_fireq_recipe();
  recipe.pre_rope_alpha = 5;
  recipe.post_rope_beta = 3;
  const QuantizedModel q = quantize_model(model, recipe, calib);
  EvaluationModel sim(q);
  const int d = 16, half = 8;
  std::vector<std::vector<double>> pair_max(2, std::vector<double>(16, 0.0)), post_max(2, std::vector<double>(32, 0.0));
  sim.engine().set_observer([&](int l, ObserveSite site, const float* rows, int tokens, int width) {
    for (int t = 0; t < tokens; ++t)
      for (int c = 0; c < width && width == 32; ++c) {
        const float* row = rows + t * width;
        if (site == ObserveSite::kKeyPreRope && (c % d) < half) {
          const int h = c / d, i = c % d;
          pair_max[l][h * half + i] = std::max(pair_max[l][h * half + i], std::hypot(static_cast<double>(row[c]), static_cast<double>(row[c + half])));
        }
        if (site == ObserveSite::kKeyPostRope) post_max[l][c] = std::max(post_max[l][c], std::fabs(static_cast<double>(row[c]) * q.layers[l].post_rope_scale[c]));
      }
  });
  for (size_t s = 0; s < calib.size(); s += 24) {
    sim.engine().reset();
    sim.engine().forward(std::span(calib).subspan(s, 24), LogitsFor::kNone);
  }
  for (int l = 0; l < 2; ++l) {
    const auto& channels = q.layers[l].post_rope_channels;
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < half; ++i) {
        const bool covered = std::find(channels.begin() + h * 4, channels.begin() + h * 4 + 4, i) != channels.begin() + h * 4 + 4;
        if (covered) {
          EXPECT_NEAR(post_max[l][h * d + i], 3.0, 0.45) << "layer " << l << " head " << h << " channel " << i;
        } else {
          EXPECT_NEAR(pair_max[l][h * half + i], 5.0, 0.75) << "layer " << l << " head " << h << " pair " << i;
        }
      }
  }
}

TEST_F(QuantModel, CheckpointRoundTripsExactlyAndIsRecognised) {
  QuantRecipe recipe = tiny_fireq_recipe();
  recipe.skip_layers = {1};
  const QuantizedModel q = quantize_model(model, recipe, calib);
  EXPECT_FALSE(q.layers[1].linears[0].is_int4);
  EXPECT_TRUE(q.layers[1].post_rope_scale.empty());
  const fs::path dir = temp_dir("roundtrip");
  const uint64_t bytes = save_quantized_checkpoint(q, dir, {});
  EXPECT_GT(bytes, 0u);
  EXPECT_TRUE(is_fireq_checkpoint(dir));
  EXPECT_TRUE(fs::is_regular_file(dir / "recipe.yaml"));
  EXPECT_FALSE(is_fireq_checkpoint(fs::temp_directory_path()));

  const QuantizedModel back = load_quantized_checkpoint(dir);
  EXPECT_EQ(recipe_to_json(back.recipe), recipe_to_json(q.recipe));
  EXPECT_EQ(back.config.hidden_size, 64);
  EXPECT_EQ(back.tok_embeddings.data, q.tok_embeddings.data);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(back.layers[l].attn_norm.data, q.layers[l].attn_norm.data);
    EXPECT_EQ(back.layers[l].post_rope_scale, q.layers[l].post_rope_scale);
    EXPECT_EQ(back.layers[l].post_rope_channels, q.layers[l].post_rope_channels);
    for (int s = 0; s < kLinearsPerLayer; ++s) {
      EXPECT_EQ(back.layers[l].linears[s].is_int4, q.layers[l].linears[s].is_int4);
      EXPECT_EQ(back.layers[l].linears[s].int4.packed, q.layers[l].linears[s].int4.packed);
      EXPECT_EQ(back.layers[l].linears[s].int4.scales_fp8, q.layers[l].linears[s].int4.scales_fp8);
      EXPECT_EQ(back.layers[l].linears[s].int4.tensor_scale_exponent, q.layers[l].linears[s].int4.tensor_scale_exponent);
      EXPECT_EQ(back.layers[l].linears[s].dense.data, q.layers[l].linears[s].dense.data);
    }
  }
  EvaluationModel a(q), b(dir);
  EXPECT_EQ(logits(a.engine()), logits(b.engine()));
  EXPECT_THROW(b.tokenizer_path(), Error);  // a test model has no tokenizer to copy

  // An existing directory is never overwritten.
  EXPECT_THROW(save_quantized_checkpoint(q, dir, {}), Error);
  fs::remove_all(dir);
}

TEST_F(QuantModel, FailedSaveLeavesNothingBehind) {
  const QuantizedModel q = quantize_model(model, load_recipe("w4a8"), {});
  const fs::path dir = temp_dir("failed");
  SaveOptions options;
  options.source = fs::temp_directory_path() / "no-such-model.gguf";  // the tokenizer copy fails
  EXPECT_THROW(save_quantized_checkpoint(q, dir, options), Error);
  EXPECT_FALSE(fs::exists(dir));
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path()))
    EXPECT_EQ(entry.path().filename().string().find("." + dir.filename().string() + ".partial"), std::string::npos);
}

TEST_F(QuantModel, BrokenCheckpointsAreRefusedWithTheProblemNamed) {
  const QuantizedModel q = quantize_model(model, load_recipe("w4a8"), {});
  const fs::path dir = temp_dir("broken");
  save_quantized_checkpoint(q, dir, {});
  const std::string config = [&] {
    std::ifstream in(dir / "config.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  auto expect_error = [&](const std::string& edited, const std::string& needle) {
    std::ofstream(dir / "config.json") << edited;
    try {
      load_quantized_checkpoint(dir);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = config;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  expect_error(replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"), "model.layers.2.input_layernorm.weight");
  expect_error(replace("\"intermediate_size\": 128", "\"intermediate_size\": 192"), "model.layers.0.mlp.gate_proj.qweight");
  expect_error(replace("\"format_version\": 1", "\"format_version\": 7"), "format_version");
  expect_error(replace("\"quant_method\": \"fireq\"", "\"quant_method\": \"awq\""), "quant_method");
  expect_error(replace("\"bits\": 4", "\"bits\": 8"), "weights.bits");
  fs::remove_all(dir);
}

TEST_F(QuantModel, BadModelsAreRefusedWithTheTensorNamed) {
  LlamaWeights bad = model;
  bad.layers[1].w_up.data[17] = std::nanf("");
  try {
    quantize_model(bad, load_recipe("w4a8"), {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
  }
  bad = model;
  bad.layers[0].attn_norm.data[2] = INFINITY;
  EXPECT_THROW(quantize_model(bad, load_recipe("none"), {}), Error);
  bad = model;
  bad.config.architecture = "gpt2";
  EXPECT_THROW(quantize_model(bad, load_recipe("w4a8"), {}), Error);
  bad = model;
  bad.layers[0].wo = FloatTensor{};  // missing
  EXPECT_THROW(quantize_model(bad, load_recipe("w4a8"), {}), Error);
  QuantRecipe skip = load_recipe("w4a8");
  skip.skip_layers = {5};
  EXPECT_THROW(quantize_model(model, skip, {}), Error);
  // Calibration of the wrong size.
  EXPECT_THROW(quantize_model(model, tiny_fireq_recipe(), std::span(calib).first(10)), Error);
  EXPECT_THROW(calibration_windows(calib, 4, 24, "calib.txt"), Error);
  EXPECT_EQ(calibration_windows(calib, 2, 24, "calib.txt").size(), 48u);
}

}  // namespace
}  // namespace fireq

namespace fireq {
namespace {

// A GGUF source's tokenizer is copied into tokenizer.gguf; it must give the source's ids.
TEST_F(QuantModel, GgufTokenizerIsCopiedIntoTheCheckpoint) {
  const fs::path gguf = fs::path(FIREQ_SOURCE_DIR) / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(gguf)) GTEST_SKIP() << gguf << " not present (scripts/setup.sh fetches it)";
  const QuantizedModel q = quantize_model(model, load_recipe("w4a8"), {});
  const fs::path dir = temp_dir("tokenizer");
  SaveOptions options;
  options.source = gguf;
  save_quantized_checkpoint(q, dir, options);
  ASSERT_EQ(checkpoint_tokenizer_path(dir), dir / "tokenizer.gguf");
  EXPECT_LT(fs::file_size(dir / "tokenizer.gguf"), fs::file_size(gguf) / 10);  // metadata only
  const std::string text = "The capital of France is Paris. Ünïcödé, digits 12345, <|im_start|>user\n  spaces\ttab";
  const auto original = load_tokenizer(gguf), copied = load_tokenizer(checkpoint_tokenizer_path(dir));
  EXPECT_EQ(copied->encode(text, true), original->encode(text, true));
  EXPECT_EQ(copied->vocab_size(), original->vocab_size());
  EXPECT_EQ(copied->eos_id(), original->eos_id());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fireq
