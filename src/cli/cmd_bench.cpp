// fireq bench: end-to-end timings of the CUDA engine on real Llama shapes with random weights
// drawn on the GPU in the checkpoint's formats (real weights cannot reach the device), on the FireQ
// path or the BF16 path: TTFT, prefill and decode throughput (decode with and without CUDA
// graphs), the decode roofline, peak memory, and a per-op profile of one prefill and one decode step.
// Writes the rows of bench/results/e2e-*.json (schema: ../shared/BENCH_RESULTS.md); peers are
// merged in by bench/e2e/merge_results.py from the same device run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "fireq/engine.h"
#include "fireq/error.h"
#include "fireq/quant.h"
#ifdef FIREQ_HAVE_CUDA_RUNTIME
#include "fireq/cuda_engine.h"
#include "fireq/safetensors.h"
#endif

namespace fireq::cli {

std::unique_ptr<Engine> device_engine(const std::string& device, const std::string& model_path,
                                      const LlamaWeights& weights, int max_context, int max_step_tokens) {
  if (device == "cpu") return nullptr;
  if (device != "cuda") fail("--device: '", device, "' is not a device (cpu, cuda)");
#ifdef FIREQ_HAVE_CUDA_RUNTIME
  return open_cuda_engine(model_path, weights,
                          {.max_context = max_context, .max_step_tokens = max_step_tokens, .max_sequences = 1,
                           .max_logit_rows = max_step_tokens});
#else
  fail("--device cuda: this build has no CUDA (nvcc was not found)");
#endif
}

namespace {
#ifdef FIREQ_HAVE_CUDA_RUNTIME

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr double kHbmBytesPerSecond = 3.0e12;  // the H100's measured copy bandwidth (the roofline)

LlamaConfig shape_config(const std::string& shape) {
  LlamaConfig c;
  c.hidden_size = 4096;
  c.num_attention_heads = 32;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-5;
  if (shape == "llama3-8b" || shape == "llama3-70b") {
    c.intermediate_size = 14336;
    c.num_hidden_layers = 32;
    c.num_key_value_heads = 8;
    c.vocab_size = 128256;
    c.max_position_embeddings = 8192;
    c.rope_theta = 500000.0;
    if (shape == "llama3-70b") {
      c.hidden_size = 8192;
      c.intermediate_size = 28672;
      c.num_hidden_layers = 80;
      c.num_attention_heads = 64;
    }
  } else if (shape == "llama2-7b") {
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_key_value_heads = 32;
    c.vocab_size = 32000;
    c.max_position_embeddings = 4096;
  } else {
    fail("--shape: unknown shape '", shape, "' (llama3-8b, llama2-7b, llama3-70b)");
  }
  return c;
}

std::vector<int> int_list(const std::string& text, const char* flag) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      out.push_back(std::stoi(item));
    } catch (const std::exception&) {
      fail("--", flag, ": '", item, "' is not an integer");
    }
    if (out.back() < 1) fail("--", flag, ": values must be positive, got ", out.back());
  }
  if (out.empty()) fail("--", flag, ": empty list");
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

class Bench {
 public:
  Bench(CudaEngine& engine, uint32_t seed) : engine_(engine), rng_(seed) {}

  std::vector<int32_t> tokens(int n) {
    std::uniform_int_distribution<int32_t> u(0, engine_.config().vocab_size - 1);
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = u(rng_);
    return t;
  }

  // Seconds of one step over `batch` new sequences of `length` tokens, including the first sampled
  // token (TTFT for batch 1); the median of `reps` after one warm-up.
  double prefill(int batch, int length, int reps, std::vector<std::pair<std::string, double>>* profile) {
    std::vector<double> times;
    for (int rep = 0; rep <= reps; ++rep) {
      std::vector<std::vector<int32_t>> prompts;
      std::vector<CudaEngine::Chunk> chunks;
      for (int b = 0; b < batch; ++b) prompts.push_back(tokens(length));
      for (int b = 0; b < batch; ++b) chunks.push_back({engine_.add_sequence(), prompts[b]});
      engine_.synchronize();
      const auto start = Clock::now();
      engine_.step(chunks);
      engine_.sample();
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (rep > 0) times.push_back(seconds);
      if (rep == reps && profile) {
        for (const auto& chunk : chunks) engine_.release_sequence(chunk.sequence);
        chunks.clear();
        for (int b = 0; b < batch; ++b) chunks.push_back({engine_.add_sequence(), prompts[b]});
        engine_.set_profiling(true);
        engine_.step(chunks);
        engine_.set_profiling(false);
        *profile = engine_.take_profile();
      }
      for (const auto& chunk : chunks) engine_.release_sequence(chunk.sequence);
    }
    return median(times);
  }

  // Seconds per decode step (step + GPU sampling + the tokens back on the host) of `batch`
  // sequences at `context` cached tokens, over `steps` steps.
  double decode(int batch, int context, int steps, int max_step_tokens,
                std::vector<std::pair<std::string, double>>* profile) {
    std::vector<int> ids;
    for (int b = 0; b < batch; ++b) ids.push_back(engine_.add_sequence());
    for (int b = 0; b < batch;) {  // prefill as many whole prompts per step as fit
      std::vector<std::vector<int32_t>> prompts;
      std::vector<CudaEngine::Chunk> chunks;
      const int per_step = std::max(1, std::min(batch - b, max_step_tokens / context));
      for (int i = 0; i < per_step; ++i) prompts.push_back(tokens(context));
      for (int i = 0; i < per_step; ++i) chunks.push_back({ids[b + i], prompts[i]});
      engine_.step(chunks);
      b += per_step;
    }
    std::vector<int32_t> next = tokens(batch);
    auto one_step = [&] {
      std::vector<CudaEngine::Chunk> chunks;
      for (int b = 0; b < batch; ++b) chunks.push_back({ids[b], std::span(&next[b], 1)});
      engine_.step(chunks);
      next = engine_.sample();
    };
    for (int i = 0; i < 3; ++i) one_step();  // warm-up: cuBLASLt plans, the decode graph for this batch
    engine_.synchronize();
    const auto start = Clock::now();
    for (int i = 0; i < steps; ++i) one_step();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count() / steps;
    if (profile) {
      engine_.set_profiling(true);
      one_step();
      engine_.set_profiling(false);
      *profile = engine_.take_profile();
    }
    for (const int id : ids) engine_.release_sequence(id);
    return seconds;
  }

 private:
  CudaEngine& engine_;
  std::mt19937 rng_;
};

Json profile_json(const std::vector<std::pair<std::string, double>>& profile) {
  double total = 0;
  for (const auto& [op, ms] : profile) total += ms;
  Json out = Json::array();
  for (const auto& [op, ms] : profile)
    out.push_back({{"op", op}, {"ms", ms}, {"share", total > 0 ? ms / total : 0.0}});
  return out;
}

void print_profile(const char* what, const std::vector<std::pair<std::string, double>>& profile) {
  double total = 0;
  for (const auto& [op, ms] : profile) total += ms;
  std::fprintf(stderr, "[bench] profile of one %s step (%.3f ms of GPU time):\n", what, total);
  for (const auto& [op, ms] : profile)
    std::fprintf(stderr, "[bench]   %-28s %9.3f ms  %5.1f%%\n", op.c_str(), ms, 100.0 * ms / total);
}

int run_bench(int argc, char** argv) {
  Args args("bench", "[--shape llama3-8b] [--out FILE.json] [options]",
            {{"shape", "model shapes: llama3-8b, llama2-7b, llama3-70b (random weights on the GPU)", "llama3-8b"},
             {"ttft", "prompt lengths for TTFT at batch 1", "1024,4096"},
             {"prefill-batch", "sequences of the prefill throughput step", "16"},
             {"prefill-lengths", "prompt lengths of the prefill throughput step", "1024"},
             {"decode-batches", "batch sizes of the decode throughput", "1,16,64"},
             {"decode-context", "cached tokens per sequence when decoding", "1024"},
             {"decode-steps", "timed decode steps", "32"},
             {"reps", "timed repetitions of each prefill (median)", "3"},
             {"seed", "seed of the random weights and tokens", "1"},
             {"path", "engine path: fireq (INT4 weights and KV, FP8 activations) or bf16", "fireq"},
             {"group-size", "FireQ weight group size along K (64 or 128)", "128"},
             {"max-context", "tokens per sequence the engine plans for (0: what the cases need)", "0"},
             {"out", "write the result rows here (JSON)", ""}});
  if (!args.parse(argc, argv)) return 0;
  if (!args.positional().empty()) fail("unexpected argument '", args.positional()[0], "'");
  if (cuda_device_count() == 0) fail("fireq bench needs a CUDA GPU; none is present");
  const std::string shape = args.str("shape");
  const LlamaConfig config = shape_config(shape);
  const std::vector<int> ttft = int_list(args.str("ttft"), "ttft");
  const std::vector<int> prefill_lengths = int_list(args.str("prefill-lengths"), "prefill-lengths");
  const std::vector<int> decode_batches = int_list(args.str("decode-batches"), "decode-batches");
  const int prefill_batch = int_list(args.str("prefill-batch"), "prefill-batch")[0];
  const int context = int_list(args.str("decode-context"), "decode-context")[0];
  const int steps = int_list(args.str("decode-steps"), "decode-steps")[0];
  const int reps = int_list(args.str("reps"), "reps")[0];
  const long long seed = args.integer("seed");
  const std::string path = args.str("path");
  if (path != "fireq" && path != "bf16") fail("--path: '", path, "' is not fireq or bf16");
  const CudaModelFormat format{.fireq = path == "fireq", .group_size = static_cast<int>(args.integer("group-size"))};
  const std::string variant = "ours:" + path;

  const int longest_prompt = std::max(*std::max_element(ttft.begin(), ttft.end()),
                                      *std::max_element(prefill_lengths.begin(), prefill_lengths.end()));
  const int max_batch = std::max(prefill_batch, *std::max_element(decode_batches.begin(), decode_batches.end()));
  CudaEngineOptions options{
      .max_context = std::max({longest_prompt, context + steps + 8, static_cast<int>(args.integer("max-context"))}),
      .max_step_tokens = std::max(longest_prompt, prefill_batch * *std::max_element(prefill_lengths.begin(),
                                                                                      prefill_lengths.end())),
      .max_sequences = max_batch,
      .max_logit_rows = max_batch};
  std::fprintf(stderr, "[bench] %s: %d layers, hidden %d, %d/%d heads, vocab %d; %s path, random weights\n",
               shape.c_str(), config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
               config.num_key_value_heads, config.vocab_size, format.fireq ? "FireQ" : "BF16");
  const auto load_start = Clock::now();
  const std::unique_ptr<CudaEngine> engine = CudaEngine::with_random_weights(config, seed, options, format);
  std::fprintf(stderr, "[bench] weights drawn in %.1f s\n",
               std::chrono::duration<double>(Clock::now() - load_start).count());
  const CudaDeviceInfo device = cuda_device_info();
  const CudaMemoryPlan& plan = engine->memory_plan();
  std::fprintf(stderr, "[bench] %s\n", plan.describe().c_str());
  // Bytes a decode step must read: every weight but the embedding table, of which it gathers only
  // its tokens' rows (when tied, the table is the lm_head and is read whole).
  const double embedding_bytes = config.tie_word_embeddings ? 0.0 : 2.0 * config.vocab_size * config.hidden_size;
  const double weight_bytes = static_cast<double>(plan.weight_bytes) - embedding_bytes;
  const double kv_bytes_per_token = static_cast<double>(plan.kv_bytes_per_page) / plan.page_size;

  Json rows = Json::array();
  Bench bench(*engine, static_cast<uint32_t>(seed));
  for (const int length : ttft) {
    const double s = bench.prefill(1, length, reps, nullptr);
    std::fprintf(stderr, "[bench] TTFT batch 1, prompt %d: %.2f ms\n", length, s * 1e3);
    rows.push_back({{"case", "ttft"}, {"shape", shape}, {"batch", 1}, {"prompt", length}, {"variant", variant},
                    {"us", s * 1e6}, {"ms", s * 1e3}});
  }
  for (const int length : prefill_lengths) {
    std::vector<std::pair<std::string, double>> profile;
    const double s = bench.prefill(prefill_batch, length, reps, &profile);
    const double rate = prefill_batch * static_cast<double>(length) / s;
    std::fprintf(stderr, "[bench] prefill batch %d x %d: %.1f ms, %.0f tokens/s\n", prefill_batch, length, s * 1e3, rate);
    print_profile("prefill", profile);
    rows.push_back({{"case", "prefill"}, {"shape", shape}, {"batch", prefill_batch}, {"prompt", length},
                    {"variant", variant}, {"us", s * 1e6}, {"tok_s", rate}, {"profile", profile_json(profile)}});
  }
  for (const int batch : decode_batches) {
    // Without graphs first (the graph path's number is the one reported as the variant).
    engine->set_cuda_graphs(false);
    const double eager = bench.decode(batch, context, steps, options.max_step_tokens, nullptr);
    engine->set_cuda_graphs(true);
    const int64_t replays_before = engine->graph_replays();
    std::vector<std::pair<std::string, double>> profile;
    const double s = bench.decode(batch, context, steps, options.max_step_tokens, &profile);
    const bool graphs = engine->graph_replays() > replays_before;
    const double bytes = weight_bytes + batch * (context + 1.0) * kv_bytes_per_token;
    const double roofline = bytes / kHbmBytesPerSecond / s;
    std::fprintf(stderr, "[bench] decode batch %d at context %d: %.3f ms/step, %.1f tokens/s, %.0f%% of the %s "
                 "roofline (%.2f GB/step at 3.0 TB/s); %s: %.3f ms/step without graphs (%.2fx)\n", batch, context,
                 s * 1e3, batch / s, 100 * roofline, format.fireq ? "INT4" : "BF16", bytes / 1e9,
                 graphs ? "CUDA graphs" : "no graphs", eager * 1e3, eager / s);
    print_profile("decode", profile);
    rows.push_back({{"case", "decode"}, {"shape", shape}, {"batch", batch}, {"context", context},
                    {"variant", variant}, {"us", s * 1e6}, {"tok_s", batch / s}, {"bytes_per_step", bytes},
                    {"roofline_fraction", roofline}, {"gbps", bytes / s / 1e9}, {"cuda_graphs", graphs},
                    {"us_without_graphs", eager * 1e6}, {"profile", profile_json(profile)}});
  }
  const double peak_gib = static_cast<double>(device.total_bytes - device.free_bytes) / (1 << 30);
  std::fprintf(stderr, "[bench] GPU memory in use (everything is allocated up front): %.2f GiB\n", peak_gib);
  rows.push_back({{"case", "peak_memory"}, {"shape", shape}, {"variant", variant}, {"gib", peak_gib},
                  {"plan", plan.describe()}});

  Json result = {{"area", "e2e"}, {"device", device.name}, {"path", path}, {"rows", rows}};
  const std::string text = result.dump(1) + "\n";
  if (const auto out = args.get("out")) {
    write_file_atomic(*out, std::as_bytes(std::span(text)));
    std::fprintf(stderr, "[bench] wrote %s\n", out->c_str());
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  return 0;
}

#else
int run_bench(int, char**) { fail("fireq bench needs the CUDA engine; this build has no CUDA (nvcc not found)"); }
#endif

const Register kBench({"bench", "end-to-end CUDA engine benchmark on Llama shapes (random weights)", run_bench});

}  // namespace
}  // namespace fireq::cli
