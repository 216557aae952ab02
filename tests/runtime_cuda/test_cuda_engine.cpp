// The CUDA engine's BF16 path against the CPU reference engine on random models whose weights
// are already on the BF16 grid (so the only differences left are the BF16 rounding of GEMM inputs
// and of the KV cache), plus batching, continuous batching, sampling and its errors. The memory
// plan is host arithmetic and is tested everywhere; the rest skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>

#include "fireq/cuda_engine.h"
#include "fireq/engine.h"
#include "fireq/error.h"
#include "fireq/numerics.h"
#include "fireq/sampling.h"
#include "logit_agreement.h"
#include "test_models.h"

namespace fireq {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

LlamaConfig llama3_8b() { return testing::llama3_shape(false); }

// SmolLM2-135M's shapes (three layers, its whole vocabulary), or a Llama-3-like small model.
LlamaConfig small_config(bool llama3_like) { return testing::small_config(llama3_like, 3, llama3_like ? 5000 : 49152); }

// Weights already on the BF16 grid.
LlamaWeights random_model(const LlamaConfig& c, uint32_t seed) { return testing::random_llama_weights(c, seed, true); }

using testing::random_tokens;

using Agreement = testing::LogitAgreement;

// Every GPU logit finite, the same number of rows on both sides.
Agreement compare(const std::vector<float>& gpu, const std::vector<float>& cpu, int vocab) {
  EXPECT_EQ(gpu.size(), cpu.size());
  const Agreement a = testing::compare_logits(gpu, cpu, vocab);
  EXPECT_EQ(a.non_finite, 0);
  return a;
}

CudaEngineOptions small_options() {
  return {.max_context = 1024, .max_step_tokens = 512, .max_sequences = 8, .max_logit_rows = 512,
          .kv_cache_bytes = int64_t{64} << 20, .print_plan = false};
}

// ----- Memory plan (no GPU needed) -----

TEST(CudaMemoryPlan, Llama3_8bFitsAnH100WithKvPool) {
  const CudaEngineOptions o{.max_context = 8192, .max_step_tokens = 4096, .max_sequences = 64, .max_logit_rows = 64};
  const int64_t gib = int64_t{1} << 30;
  const CudaMemoryPlan plan = plan_cuda_memory(llama3_8b(), o, 79 * gib, 80 * gib);
  EXPECT_NEAR(static_cast<double>(plan.weight_bytes) / 1e9, 16.06, 0.05);  // 8.03 B parameters in BF16
  EXPECT_EQ(plan.kv_bytes_per_page, int64_t{32} * 2 * 8 * 16 * 128 * 2);   // 128 KiB per token
  EXPECT_GT(plan.kv_tokens(), 64 * 4096);
  EXPECT_LE(plan.weight_bytes + plan.activation_bytes + plan.reserve_bytes + plan.kv_pages * plan.kv_bytes_per_page,
            79 * gib);
  EXPECT_NE(plan.describe().find("KV pool"), std::string::npos);
}

TEST(CudaMemoryPlan, KvCapAndRefusals) {
  const int64_t gib = int64_t{1} << 30;
  CudaEngineOptions o{.max_context = 8192, .max_step_tokens = 2048, .max_sequences = 64, .max_logit_rows = 64,
                      .kv_cache_bytes = 2 * gib};
  const CudaMemoryPlan capped = plan_cuda_memory(llama3_8b(), o, 79 * gib, 80 * gib);
  EXPECT_LE(capped.kv_pages * capped.kv_bytes_per_page, 2 * gib);
  EXPECT_EQ(capped.kv_tokens(), 2 * gib / capped.kv_bytes_per_page * 16);

  LlamaConfig big = llama3_8b();  // Llama-3-70B shapes: 141 GB in BF16
  big.hidden_size = 8192;
  big.intermediate_size = 28672;
  big.num_hidden_layers = 80;
  big.num_attention_heads = 64;
  try {
    plan_cuda_memory(big, o, 79 * gib, 80 * gib);
    FAIL() << "70B in BF16 must not fit 80 GB";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit"), std::string::npos) << e.what();
  }
  o.kv_cache_bytes = 64 << 20;  // 512 tokens: less than one 8k sequence
  EXPECT_THROW(plan_cuda_memory(llama3_8b(), o, 79 * gib, 80 * gib), Error);
  o.page_size = 24;
  EXPECT_THROW(plan_cuda_memory(llama3_8b(), o, 79 * gib, 80 * gib), Error);
}

// ----- Against the CPU reference -----

void expect_matches_cpu(bool llama3_like) {
  const LlamaConfig config = small_config(llama3_like);
  const LlamaWeights weights = random_model(config, 11 + llama3_like);
  CpuEngine cpu(weights);
  CudaEngine gpu(weights, small_options());
  const std::vector<int32_t> prompt = random_tokens(300, config.vocab_size, 5);
  const Agreement prefill = compare(gpu.forward(prompt, LogitsFor::kAll), cpu.forward(prompt, LogitsFor::kAll),
                                    config.vocab_size);
  // Decode one token at a time (split-KV attention) after the prefill.
  std::vector<float> gpu_decode, cpu_decode;
  for (const int32_t t : random_tokens(40, config.vocab_size, 6)) {
    const std::vector<float> g = gpu.forward(std::span(&t, 1), LogitsFor::kLast);
    const std::vector<float> c = cpu.forward(std::span(&t, 1), LogitsFor::kLast);
    gpu_decode.insert(gpu_decode.end(), g.begin(), g.end());
    cpu_decode.insert(cpu_decode.end(), c.begin(), c.end());
  }
  // Two tokens at once: the decode-sized attention blocks with two queries per block.
  const std::vector<int32_t> pair = random_tokens(2, config.vocab_size, 7);
  const std::vector<float> g = gpu.forward(pair, LogitsFor::kAll), c = cpu.forward(pair, LogitsFor::kAll);
  gpu_decode.insert(gpu_decode.end(), g.begin(), g.end());
  cpu_decode.insert(cpu_decode.end(), c.begin(), c.end());
  EXPECT_EQ(gpu.position(), 342);
  const Agreement decode = compare(gpu_decode, cpu_decode, config.vocab_size);
  for (const auto& [name, a] : {std::pair{"prefill", prefill}, std::pair{"decode", decode}}) {
    std::printf("[correctness] %s %s: %lld rows, max |logit diff| %.4f (max |logit| %.2f), top-1 agreement %.1f%%\n",
                llama3_like ? "llama3-like" : "smollm2-shapes", name, static_cast<long long>(a.rows), a.max_abs_diff,
                a.max_abs_ref, 100.0 * a.top1());
    EXPECT_LT(a.max_abs_diff, 0.02 * a.max_abs_ref) << name;
    EXPECT_GE(a.top1_same, 0.95 * a.rows) << name;
  }
}

TEST(CudaEngine, SmolLM2ShapesMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu(false);
}

TEST(CudaEngine, Llama3LikeShapesMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu(true);
}

// ----- Several sequences -----

TEST(CudaEngine, BatchedStepsMatchSequencesRunAlone) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(true);
  const LlamaWeights weights = random_model(config, 21);
  CudaEngine batched(weights, small_options());
  const int lengths[3] = {37, 200, 5};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> ids;
  std::vector<CudaEngine::Chunk> chunks;
  for (int s = 0; s < 3; ++s) prompts.push_back(random_tokens(lengths[s], config.vocab_size, 100 + s));
  for (int s = 0; s < 3; ++s) {
    ids.push_back(batched.add_sequence());
    chunks.push_back({ids[s], prompts[s]});
  }
  batched.step(chunks);
  std::vector<float> logits = batched.last_logits();
  std::vector<int32_t> next = batched.sample();  // greedy
  for (int round = 0; round < 4; ++round) {
    std::vector<CudaEngine::Chunk> decode;
    for (int s = 0; s < 3; ++s) decode.push_back({ids[s], std::span(&next[s], 1)});
    for (int s = 0; s < 3; ++s) prompts[s].push_back(next[s]);
    batched.step(decode);
    logits = batched.last_logits();
    next = batched.sample();
  }
  const int vocab = config.vocab_size;
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(batched.sequence_length(ids[s]), lengths[s] + 4);
    CudaEngine alone(weights, small_options());
    const std::vector<float> ref = alone.forward(prompts[s], LogitsFor::kLast);
    double max_diff = 0;
    for (int i = 0; i < vocab; ++i) max_diff = std::max(max_diff, double(std::fabs(ref[i] - logits[size_t(s) * vocab + i])));
    EXPECT_LT(max_diff, 2e-2) << "sequence " << s;
    EXPECT_EQ(argmax(std::span(ref)), next[s]) << "sequence " << s;
  }
}

TEST(CudaEngine, ContinuousBatchingFreesPagesAtOnce) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(true);
  const LlamaWeights weights = random_model(config, 31);
  CudaEngine engine(weights, small_options());
  const int64_t free_at_start = engine.free_kv_tokens();
  const int a = engine.add_sequence(), b = engine.add_sequence();
  const std::vector<int32_t> pa = random_tokens(100, config.vocab_size, 1), pb = random_tokens(50, config.vocab_size, 2);
  const CudaEngine::Chunk first[] = {{a, pa}, {b, pb}};
  engine.step(first);
  EXPECT_EQ(engine.free_kv_tokens(), free_at_start - 112 - 64);  // whole pages of 16
  engine.release_sequence(a);
  EXPECT_EQ(engine.free_kv_tokens(), free_at_start - 64);
  EXPECT_THROW(engine.sequence_length(a), Error);
  // A newcomer joins beside b (prefill chunk mixed with b's decode token) and reuses a's pages.
  const int c = engine.add_sequence();
  const std::vector<int32_t> pc = random_tokens(70, config.vocab_size, 3);
  const int32_t b_next = 7;
  const CudaEngine::Chunk mixed[] = {{c, pc}, {b, std::span(&b_next, 1)}};
  engine.step(mixed);
  const std::vector<float> logits = engine.last_logits();
  CudaEngine fresh(weights, small_options());
  const std::vector<float> ref = fresh.forward(pc, LogitsFor::kLast);
  for (int i = 0; i < config.vocab_size; i += 7) EXPECT_NEAR(logits[i], ref[i], 2e-2) << i;
}

TEST(CudaEngine, RefusesWhatDoesNotFit) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(true);
  const LlamaWeights weights = random_model(config, 41);
  CudaEngineOptions o = small_options();
  o.max_context = 256;
  o.kv_cache_bytes = int64_t{o.max_context} * 3 * 2 * 2 * 128 * 2;  // one full sequence of KV pages
  CudaEngine engine(weights, o);
  const int a = engine.add_sequence(), b = engine.add_sequence();
  const std::vector<int32_t> long_prompt = random_tokens(200, config.vocab_size, 4);
  const CudaEngine::Chunk first{a, long_prompt};
  engine.step(std::span(&first, 1));
  EXPECT_FALSE(engine.can_grow(b, 100));
  const CudaEngine::Chunk second{b, long_prompt};
  try {
    engine.step(std::span(&second, 1));
    FAIL() << "the KV pool is full";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV pool is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.sequence_length(a), 200);  // the refused step changed nothing
  const std::vector<int32_t> bad = {config.vocab_size};
  const CudaEngine::Chunk out_of_vocab{a, bad};
  EXPECT_THROW(engine.step(std::span(&out_of_vocab, 1)), Error);
  const std::vector<int32_t> too_long = random_tokens(100, config.vocab_size, 5);
  const CudaEngine::Chunk past_context{a, too_long};
  EXPECT_THROW(engine.step(std::span(&past_context, 1)), Error);
  engine.release_sequence(a);
  EXPECT_TRUE(engine.can_grow(b, 200));
}

TEST(CudaEngine, SchedulerMatchesRequestsRunAlone) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(false);
  const LlamaWeights weights = random_model(config, 71);
  CudaEngine engine(weights, small_options());
  Scheduler scheduler(engine, {.prefill_chunk = 64});
  const int prompt_lengths[] = {5, 70, 300, 33}, new_tokens[] = {8, 3, 6, 10};
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i)
    requests.push_back({.prompt = random_tokens(prompt_lengths[i], config.vocab_size, 80 + i),
                        .max_new_tokens = new_tokens[i]});
  for (int i = 0; i < 3; ++i) scheduler.submit(requests[i]);
  std::map<int, std::vector<int32_t>> out;
  for (int step = 0; !scheduler.idle(); ++step) {
    if (step == 2) scheduler.submit(requests[3]);  // joins while the others run
    for (const GeneratedToken& g : scheduler.step()) out[g.request].push_back(g.token);
    ASSERT_LT(step, 200);
  }
  for (int i = 0; i < 4; ++i) {
    CudaEngine alone(weights, small_options());
    std::vector<int32_t> expected;
    std::vector<float> logits = alone.forward(requests[i].prompt, LogitsFor::kLast);
    for (int t = 0; t < requests[i].max_new_tokens; ++t) {
      expected.push_back(argmax(std::span(logits)));
      logits = alone.forward(std::span(&expected.back(), 1), LogitsFor::kLast);
    }
    EXPECT_EQ(out[i], expected) << "request " << i;
  }
  EXPECT_EQ(engine.free_kv_tokens(), engine.kv_capacity_tokens());
}

// ----- Sampling on the GPU -----

TEST(CudaEngine, SamplingMatchesCpuSampler) {
  SKIP_WITHOUT_GPU();
  const LlamaConfig config = small_config(false);
  const LlamaWeights weights = random_model(config, 51);
  CudaEngine engine(weights, small_options());
  const SamplingOptions variants[] = {{.temperature = 0.0},
                                      {.temperature = 0.8, .seed = 3},
                                      {.temperature = 1.3, .top_k = 40, .seed = 4},
                                      {.temperature = 0.7, .top_p = 0.9, .seed = 5},
                                      {.temperature = 1.0, .top_k = 100, .top_p = 0.8, .seed = 6}};
  std::vector<int> ids;
  std::vector<Sampler> cpu;
  std::vector<std::vector<int32_t>> prompts;
  for (int s = 0; s < 5; ++s) {
    ids.push_back(engine.add_sequence());
    engine.set_sampling(ids[s], variants[s]);
    cpu.emplace_back(variants[s]);
    prompts.push_back(random_tokens(20 + s, config.vocab_size, 60 + s));
  }
  int same = 0, draws = 0;
  std::vector<int32_t> next(5);
  for (int round = 0; round < 12; ++round) {
    std::vector<CudaEngine::Chunk> chunks;
    for (int s = 0; s < 5; ++s)
      chunks.push_back({ids[s], round == 0 ? std::span<const int32_t>(prompts[s]) : std::span<const int32_t>(&next[s], 1)});
    engine.step(chunks);
    const std::vector<float> logits = engine.last_logits();
    const std::vector<int32_t> drawn = engine.sample();
    for (int s = 0; s < 5; ++s) {
      const int32_t expected = cpu[s].sample(std::span(logits).subspan(size_t(s) * config.vocab_size, config.vocab_size));
      same += drawn[s] == expected;
      ++draws;
      if (s == 0) {
        EXPECT_EQ(drawn[s], expected) << "greedy must match exactly, round " << round;
      }
      next[s] = drawn[s];
    }
  }
  std::printf("[sampling] GPU draws equal to fireq::Sampler's: %d of %d\n", same, draws);
  EXPECT_GE(same, draws - 2);  // only a sum-order tie at a boundary may differ
  EXPECT_THROW(engine.set_sampling(ids[0], {.temperature = 1.0, .top_p = 0.0}), Error);
}

}  // namespace
}  // namespace fireq
