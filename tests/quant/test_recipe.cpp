#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "fireq/error.h"
#include "fireq/quant_recipe.h"

namespace fireq {
namespace {

// Expects parse_recipe to fail with a message containing every one of `needles`.
void expect_refused(const std::string& yaml, std::initializer_list<std::string> needles) {
  try {
    parse_recipe(yaml, "test.yaml");
    FAIL() << "accepted:\n" << yaml;
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
    EXPECT_NE(message.find("test.yaml"), std::string::npos) << message;
  }
}

TEST(QuantRecipe, PresetsParseAndFireqDefaultHasThePublishedSettings) {
  for (const auto& name : builtin_recipe_names()) EXPECT_EQ(load_recipe(name).name, name);
  const QuantRecipe r = load_recipe("fireq-default");
  EXPECT_TRUE(r.quantize_weights);
  EXPECT_EQ(r.group_size, 128);
  EXPECT_EQ(r.weight_scale_dtype, ScaleDType::kFp8E4M3);
  EXPECT_TRUE(r.per_tensor_scale);
  EXPECT_EQ(r.group_scale_search, GroupScaleSearch::kAbsmax);
  EXPECT_EQ(r.activations, ActivationDType::kFp8E4M3PerToken);
  EXPECT_FALSE(r.smooth_qkv.enabled);
  EXPECT_FALSE(r.smooth_o.enabled);
  EXPECT_TRUE(r.smooth_gate_up.enabled);
  EXPECT_DOUBLE_EQ(r.smooth_gate_up.constant, 0.0096);
  EXPECT_EQ(r.smooth_gate_up.scale_type, 2);
  EXPECT_DOUBLE_EQ(r.smooth_down.constant, 0.015);
  EXPECT_DOUBLE_EQ(r.v_mul, 0.9);
  EXPECT_TRUE(r.fp8_queries);
  EXPECT_EQ(r.kv_bits, 4);
  EXPECT_TRUE(r.pre_rope);
  EXPECT_TRUE(r.post_rope);
  EXPECT_DOUBLE_EQ(r.pre_rope_alpha, 8);
  EXPECT_DOUBLE_EQ(r.post_rope_beta, 8);
  EXPECT_EQ(r.post_rope_top_k, 8);
  EXPECT_EQ(r.calib_samples, 10);
  EXPECT_EQ(r.calib_seq_len, 2048);

  const QuantRecipe none = load_recipe("none");
  EXPECT_FALSE(none.quantize_weights);
  EXPECT_FALSE(none.quantize_kv());
  const QuantRecipe kv4 = load_recipe("kv4");
  EXPECT_FALSE(kv4.quantize_weights);
  EXPECT_TRUE(kv4.quantize_kv());
  const QuantRecipe w4a8 = load_recipe("w4a8");
  EXPECT_TRUE(w4a8.quantize_weights);
  EXPECT_FALSE(w4a8.quantize_kv());
}

TEST(QuantRecipe, YamlAndJsonRoundTripEveryField) {
  QuantRecipe r = load_recipe("fireq-default");
  r.skip_layers = {0, 7};
  r.group_size = 64;
  r.k_remainder = KRemainder::kRefuse;
  r.kv_scale_dtype = ScaleDType::kBf16;
  r.smooth_o = {true, 1, 0.25};
  r.tensor_scale_floor = TensorScaleFloor::kNormal;
  r.group_scale_search = GroupScaleSearch::kMse;
  for (const std::string& text : {recipe_to_yaml(r), recipe_to_json(r)}) {
    const QuantRecipe back = parse_recipe(text, "round-trip");
    EXPECT_EQ(recipe_to_json(back), recipe_to_json(r)) << text;
  }
}

TEST(QuantRecipe, BaseIsOverriddenKeyByKey) {
  const QuantRecipe r = parse_recipe(
      "base: fireq-default\nname: mine\nweights: {group_size: 64}\nattention: {post_rope: {top_k: 4}}\n",
      "mine.yaml");
  EXPECT_EQ(r.name, "mine");
  EXPECT_EQ(r.group_size, 64);
  EXPECT_EQ(r.post_rope_top_k, 4);
  EXPECT_TRUE(r.post_rope);
  EXPECT_DOUBLE_EQ(r.v_mul, 0.9);
}

TEST(QuantRecipe, UnknownKeysAreRefusedWithTheirPath) {
  expect_refused("name: x\ncolour: red\n", {"colour", "unknown key"});
  expect_refused("name: x\nsmoothing: {gate_up: {constnat: 1}}\n", {"smoothing.gate_up.constnat"});
  expect_refused("name: x\nattention: {post_rope: {gamma: 2}}\n", {"attention.post_rope.gamma"});
  expect_refused("base: no-such-preset\nname: x\n", {"no-such-preset"});
}

TEST(QuantRecipe, OutOfRangeAndMistypedValuesAreRefusedWithTheKeyNamed) {
  expect_refused("name: x\nweights: {group_size: 96}\n", {"weights.group_size", "96"});
  expect_refused("name: x\nweights: {bits: 8}\n", {"weights.bits"});
  expect_refused("name: x\nweights: {bits: four}\n", {"weights.bits", "integer"});
  expect_refused("name: x\nweights: {scale_dtype: fp16}\n", {"weights.scale_dtype", "fp16"});
  expect_refused("name: x\nweights: {k_not_multiple_of_group: truncate}\n", {"k_not_multiple_of_group"});
  expect_refused("name: x\nweights: {tensor_scale_floor: tiny}\n", {"weights.tensor_scale_floor"});
  expect_refused("name: x\nweights: {scale_search: gptq}\n", {"weights.scale_search", "gptq"});
  expect_refused("name: x\nsmoothing: {down: {scale_type: 3}}\n", {"smoothing.down.scale_type"});
  expect_refused("name: x\nsmoothing: {down: {constant: 0}}\n", {"smoothing.down.constant"});
  expect_refused("name: x\nv_mul: -1\n", {"v_mul"});
  expect_refused("name: x\nv_mul: .nan\n", {"v_mul"});
  expect_refused("name: x\nattention: {kv_bits: 8}\n", {"attention.kv_bits"});
  expect_refused("name: x\nattention: {post_rope: {top_k: 0}}\n", {"attention.post_rope.top_k"});
  expect_refused("name: x\ncalibration: {samples: 0}\n", {"calibration.samples"});
  expect_refused("name: x\ncalibration: {seq_len: 1.5}\n", {"calibration.seq_len"});
  expect_refused("name: x\nskip_layers: [1, -2]\n", {"skip_layers[1]"});
  expect_refused("name: x\nweights: {quantize: maybe}\n", {"weights.quantize"});
  expect_refused("name: x\nweights: [1, 2]\n", {"weights", "mapping"});
  expect_refused("name: [x\n", {"not valid YAML"});
}

TEST(QuantRecipe, InconsistentCombinationsAreRefused) {
  expect_refused("name: x\nactivations: {dtype: fp8_e4m3}\n", {"activations.dtype"});
  expect_refused("name: x\nattention: {post_rope: {enabled: true}}\n", {"post_rope", "kv_bits"});
}

TEST(QuantRecipe, LoadsFilesAndRefusesUnknownNames) {
  const auto path = std::filesystem::temp_directory_path() / "fireq_quant_test_recipe.yaml";
  std::ofstream(path) << "base: w4a8\nname: from-file\nweights: {group_size: 64}\n";
  const QuantRecipe r = load_recipe(path.string());
  EXPECT_EQ(r.name, "from-file");
  EXPECT_EQ(r.group_size, 64);
  std::filesystem::remove(path);
  EXPECT_THROW(load_recipe("no-such-recipe-or-file"), Error);
  EXPECT_THROW(builtin_recipe_yaml("nope"), Error);
}

}  // namespace
}  // namespace fireq
