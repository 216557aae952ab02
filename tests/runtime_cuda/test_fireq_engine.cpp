// The CUDA engine's FireQ path: its memory plan and its CPU emulation (host, tested everywhere), and
// on a GPU small random models quantized with the fireq-smollm2 recipe against the CPU engine with
// the same simulated numerics (quant.h EvaluationModel) and against the emulation, decode graphs
// against eager steps, batched and chunked steps against sequences run alone, and the checkpoints
// it refuses.
//
// Tolerances: FP8 and INT4 roundings are discontinuous, so two computations of the same quantized
// model that differ by one BF16 or FP16 rounding somewhere (the GPU's BF16 residual stream against
// the simulation's FP32 one; FP8 against FP16 P; another GEMM summation order for another batch)
// flip a few codes per layer and end ~5-10% apart in relative RMS of the logits (measured on the
// real model: docs/ENGINE.md). The bounds below sit above that and far below what a wrong scale,
// layout or position gives (relative RMS ~1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "fireq/cuda_engine.h"
#include "fireq/engine.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/quant.h"
#include "logit_agreement.h"
#include "test_models.h"

namespace fireq {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

constexpr int64_t kGiB = int64_t{1} << 30;

using testing::llama3_shape;
using testing::random_tokens;

// Two layers of SmolLM2's shapes or of a Llama-3-like model; small vocabularies.
LlamaConfig small_config(bool llama3_like) { return testing::small_config(llama3_like, 2, llama3_like ? 3000 : 2500); }

// A random float model quantized with the fireq-smollm2 recipe (group 64, FP8 activations and
// queries, INT4 KV with BF16 scales, smoothing, pre- and post-RoPE scaling calibrated on random
// tokens); group 128 pads SmolLM2's K = 576 to 640 (zero_pad).
QuantizedModel quantized_model(const LlamaConfig& c, uint32_t seed, const std::vector<int>& skip_layers = {},
                               int group_size = 64) {
  const LlamaWeights w = testing::random_llama_weights(c, seed, false);
  QuantRecipe recipe = load_recipe("fireq-smollm2");
  recipe.calib_samples = 2;
  recipe.calib_seq_len = 64;
  recipe.skip_layers = skip_layers;
  recipe.group_size = group_size;
  recipe.k_remainder = KRemainder::kZeroPad;
  const std::vector<int32_t> calibration = random_tokens(2 * 64, c.vocab_size, seed + 1);
  return quantize_model(w, recipe, calibration);
}

CudaEngineOptions small_options(bool graphs = true) {
  return {.max_context = 1024, .max_step_tokens = 512, .max_sequences = 8, .max_logit_rows = 512,
          .kv_cache_bytes = int64_t{32} << 20, .print_plan = false, .cuda_graphs = graphs};
}

using Agreement = testing::LogitAgreement;

// Every GPU logit finite, the same number of rows on both sides.
Agreement compare(const std::vector<float>& gpu, const std::vector<float>& ref, int vocab) {
  EXPECT_EQ(gpu.size(), ref.size());
  const Agreement a = testing::compare_logits(gpu, ref, vocab);
  EXPECT_EQ(a.non_finite, 0);
  return a;
}

void report(const char* what, const Agreement& a) {
  std::printf("[correctness] %s: %lld rows, max |logit diff| %.4f (max |logit| %.2f), relative RMS %.4f, top-1 %.1f%%\n",
              what, static_cast<long long>(a.rows), a.max_abs_diff, a.max_abs_ref, a.relative_rms(), 100.0 * a.top1());
}

// ----- Memory plan (no GPU needed) -----

TEST(FireqMemoryPlan, Llama3_8bWeightsAndKvInInt4) {
  const CudaEngineOptions o{.max_context = 8192, .max_step_tokens = 4096, .max_sequences = 64, .max_logit_rows = 64};
  const CudaModelFormat fireq{.fireq = true, .group_size = 128};
  const CudaMemoryPlan bf16 = plan_cuda_memory(llama3_shape(false), o, 79 * kGiB, 80 * kGiB);
  const CudaMemoryPlan plan = plan_cuda_memory(llama3_shape(false), o, 79 * kGiB, 80 * kGiB, fireq);
  EXPECT_TRUE(plan.fireq);
  // 6.98 B linear parameters at 4 bits + an FP8 scale per 128, the 1.05 B BF16 embedding + lm_head.
  EXPECT_NEAR(static_cast<double>(plan.weight_bytes) / 1e9, 6.98 * (0.5 + 1.0 / 128) + 1.05 * 2, 0.05);
  // Per token and layer: K and V, 8 heads x (64 bytes of INT4 + a 2-byte BF16 scale).
  EXPECT_EQ(plan.kv_bytes_per_page, int64_t{32} * 2 * 16 * 8 * (64 + 2));
  EXPECT_EQ(bf16.kv_bytes_per_page * 66, plan.kv_bytes_per_page * 256);
  // 64 sequences of 8k tokens fit in INT4 (the pool's cap), not in BF16.
  EXPECT_EQ(plan.kv_tokens(), 64 * 8192);
  EXPECT_LT(bf16.kv_tokens(), 64 * 8192);
  EXPECT_LE(plan.weight_bytes + plan.activation_bytes + plan.reserve_bytes + (plan.kv_pages + 1) * plan.kv_bytes_per_page,
            79 * kGiB);
  EXPECT_NE(plan.describe().find("FireQ"), std::string::npos);
}

TEST(FireqMemoryPlan, Llama3_70bFitsOneH100WithKv) {
  const CudaEngineOptions o{.max_context = 8192, .max_step_tokens = 2048, .max_sequences = 16, .max_logit_rows = 16};
  const CudaModelFormat fireq{.fireq = true, .group_size = 128};
  EXPECT_THROW(plan_cuda_memory(llama3_shape(true), o, 79 * kGiB, 80 * kGiB), Error);  // BF16: 141 GB
  const CudaMemoryPlan plan = plan_cuda_memory(llama3_shape(true), o, 79 * kGiB, 80 * kGiB, fireq);
  EXPECT_LT(plan.weight_bytes, 40 * kGiB);
  EXPECT_GE(plan.kv_tokens(), 16 * 8192);
}

// ----- Against the simulated numerics on the CPU -----

void expect_matches_simulation(bool llama3_like, int group_size = 64) {
  const LlamaConfig config = small_config(llama3_like);
  const QuantizedModel model = quantized_model(config, 31 + llama3_like, {}, group_size);
  EvaluationModel simulated(model);
  CpuEngine& cpu = simulated.engine();
  CudaEngine gpu(model, small_options());
  EXPECT_TRUE(gpu.format().fireq);
  const std::vector<int32_t> prompt = random_tokens(300, config.vocab_size, 5);
  const Agreement prefill =
      compare(gpu.forward(prompt, LogitsFor::kAll), cpu.forward(prompt, LogitsFor::kAll), config.vocab_size);
  // Decode one token at a time (split-KV attention; graphs from the third step on), then two at once
  // (the prefill kernel over the cached prefix).
  std::vector<float> gpu_decode, cpu_decode;
  for (const int32_t t : random_tokens(24, config.vocab_size, 6)) {
    const std::vector<float> g = gpu.forward(std::span(&t, 1), LogitsFor::kLast);
    const std::vector<float> c = cpu.forward(std::span(&t, 1), LogitsFor::kLast);
    gpu_decode.insert(gpu_decode.end(), g.begin(), g.end());
    cpu_decode.insert(cpu_decode.end(), c.begin(), c.end());
  }
  const std::vector<int32_t> pair = random_tokens(2, config.vocab_size, 7);
  const std::vector<float> g = gpu.forward(pair, LogitsFor::kAll), c = cpu.forward(pair, LogitsFor::kAll);
  gpu_decode.insert(gpu_decode.end(), g.begin(), g.end());
  cpu_decode.insert(cpu_decode.end(), c.begin(), c.end());
  EXPECT_EQ(gpu.position(), 326);
  EXPECT_GT(gpu.graph_replays(), 0);
  const Agreement decode = compare(gpu_decode, cpu_decode, config.vocab_size);
  for (const auto& [name, a] : {std::pair{"prefill", prefill}, std::pair{"decode", decode}}) {
    report((std::string(llama3_like ? "fireq llama3-like " : "fireq smollm2-shapes ") + name).c_str(), a);
    EXPECT_LT(a.relative_rms(), 0.15) << name;
    EXPECT_LT(a.max_abs_diff, 0.25 * a.max_abs_ref) << name;
    EXPECT_GE(a.top1_same, 0.8 * a.rows) << name;
  }
  // The first 300 tokens again, on a fresh sequence, against the kernels' CPU references op for op.
  gpu.reset();
  const Agreement emulated = compare(gpu.forward(prompt, LogitsFor::kAll), fireq_path_reference_logits(model, prompt),
                                     config.vocab_size);
  report((std::string(llama3_like ? "fireq llama3-like " : "fireq smollm2-shapes ") + "prefill vs emulation").c_str(),
         emulated);
  EXPECT_LT(emulated.relative_rms(), 0.15);
  EXPECT_GE(emulated.top1_same, 0.8 * emulated.rows);
}

// The emulation (the GPU's numerics through the kernels' CPU references) against the simulation:
// both see the same quantized model; they part only by the GPU's own roundings.
TEST(FireqEmulation, CloseToTheSimulatedNumerics) {
  const LlamaConfig config = small_config(false);
  const std::vector<int32_t> prompt = random_tokens(48, config.vocab_size, 62);
  for (const int group_size : {64, 128}) {  // 128: K = 576 padded to 640
    const QuantizedModel model = quantized_model(config, 61, {}, group_size);
    EvaluationModel simulated(model);
    const Agreement a = compare(fireq_path_reference_logits(model, prompt),
                                simulated.engine().forward(prompt, LogitsFor::kAll), config.vocab_size);
    report(("fireq emulation vs simulation, group " + std::to_string(group_size)).c_str(), a);
    EXPECT_LT(a.relative_rms(), 0.15);
    EXPECT_GE(a.top1_same, 0.8 * a.rows);
  }
  QuantizedModel skipped = quantized_model(config, 61);
  skipped.layers[1].quantized = false;
  EXPECT_THROW(fireq_path_reference_logits(skipped, prompt), Error);
}

TEST(FireqEngine, SmolLM2ShapesMatchSimulatedNumerics) {
  SKIP_WITHOUT_GPU();
  expect_matches_simulation(false);
}

TEST(FireqEngine, Llama3LikeShapesMatchSimulatedNumerics) {
  SKIP_WITHOUT_GPU();
  expect_matches_simulation(true);
}

// Group 128 on SmolLM2's shapes: K = 576 stored padded to 640, the FP8 rows zero-padded to match.
TEST(FireqEngine, PaddedKMatchesSimulatedNumerics) {
  SKIP_WITHOUT_GPU();
  expect_matches_simulation(false, 128);
}

// Decode steps of 3 sequences (graph bucket 4: one padded row) replayed from graphs against the
// same steps run eagerly; then one sequence's chunked prefill mixed with the others' decode.
TEST(FireqEngine, GraphsAndMixedStepsMatchEagerAndAlone) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(true);
  const QuantizedModel model = quantized_model(config, 41);
  CudaEngine graphs(model, small_options(true)), eager(model, small_options(false));
  const int lengths[3] = {37, 200, 5};
  std::vector<std::vector<int32_t>> prompts;
  for (int s = 0; s < 3; ++s) prompts.push_back(random_tokens(lengths[s], config.vocab_size, 100 + s));
  std::vector<int> ids;
  std::vector<CudaEngine::Chunk> chunks;
  for (int s = 0; s < 3; ++s) {
    ids.push_back(graphs.add_sequence());
    EXPECT_EQ(eager.add_sequence(), ids.back());
    chunks.push_back({ids[s], prompts[s]});
  }
  graphs.step(chunks);
  eager.step(chunks);
  std::vector<int32_t> next = graphs.sample();
  EXPECT_EQ(eager.sample(), next);
  std::vector<float> graph_logits, eager_logits;
  for (int round = 0; round < 6; ++round) {
    std::vector<CudaEngine::Chunk> decode;
    for (int s = 0; s < 3; ++s) decode.push_back({ids[s], std::span(&next[s], 1)});
    for (int s = 0; s < 3; ++s) prompts[s].push_back(next[s]);
    graphs.step(decode);
    eager.step(decode);
    const std::vector<float> g = graphs.last_logits(), e = eager.last_logits();
    graph_logits.insert(graph_logits.end(), g.begin(), g.end());
    eager_logits.insert(eager_logits.end(), e.begin(), e.end());
    next = graphs.sample();
  }
  EXPECT_EQ(graphs.graphs_captured(), 1);
  EXPECT_GE(graphs.graph_replays(), 4);
  EXPECT_EQ(eager.graph_replays(), 0);
  const Agreement replayed = compare(graph_logits, eager_logits, config.vocab_size);
  report("fireq graphs vs eager decode", replayed);
  EXPECT_LT(replayed.max_abs_diff, 1e-3 * replayed.max_abs_ref);

  // A fourth sequence prefills in two chunks while the three decode (split-KV for the decode rows,
  // the prefill kernel over the cached prefix for the chunk).
  const std::vector<int32_t> fourth = random_tokens(150, config.vocab_size, 104);
  const int id4 = graphs.add_sequence();
  std::vector<float> mixed_last;
  for (const auto& [begin, end] : {std::pair{0, 90}, std::pair{90, 150}}) {
    std::vector<CudaEngine::Chunk> step;
    for (int s = 0; s < 3; ++s) step.push_back({ids[s], std::span(&next[s], 1)});
    for (int s = 0; s < 3; ++s) prompts[s].push_back(next[s]);
    step.push_back({id4, std::span(fourth).subspan(begin, end - begin)});
    graphs.step(step);
    mixed_last = graphs.last_logits();
    next = graphs.sample();
  }
  const int vocab = config.vocab_size;
  for (int s = 0; s < 4; ++s) {
    CudaEngine alone(model, small_options());
    const std::vector<float> ref = alone.forward(s < 3 ? prompts[s] : fourth, LogitsFor::kLast);
    const Agreement a = compare(std::vector<float>(mixed_last.begin() + size_t(s) * vocab,
                                                   mixed_last.begin() + size_t(s + 1) * vocab),
                                ref, vocab);
    EXPECT_LT(a.relative_rms(), 0.12) << "sequence " << s;
    EXPECT_EQ(a.top1_same, 1) << "sequence " << s;
  }
}

TEST(FireqEngine, RefusesWhatTheKernelsDoNotRun) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(false);
  try {
    CudaEngine engine(quantized_model(config, 51, {1}), small_options());
    FAIL() << "a BF16 (skipped) layer must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1"), std::string::npos) << e.what();
  }
  QuantizedModel model = quantized_model(config, 52);
  model.recipe.kv_scale_dtype = ScaleDType::kFp8E4M3;
  try {
    CudaEngine engine(model, small_options());
    FAIL() << "FP8 K/V scales must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_scale_dtype"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fireq
