// fireq ppl: WikiText-style perplexity with the CPU reference engine, of a float model or of a
// FireQ checkpoint with its quantized numerics simulated (procedure and default slice in
// docs/EVALUATION.md). Progress goes to stderr, the result to stdout.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "command.h"
#include "fireq/engine.h"
#include "fireq/error.h"
#include "fireq/model.h"
#include "fireq/quant.h"
#include "fireq/tokenizer.h"

namespace fireq::cli {
namespace {

constexpr const char* kDefaultModel = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char* kDefaultText = "data/text/wiki.eval.txt";

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--text: cannot open ", path, " (run scripts/setup.sh to prepare data/text/)");
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) fail("--text: ", path, " is empty");
  return text.str();
}

// Multiply-adds x2 of one window: every linear (lm_head included) once per token, and causal
// attention (q·k and p·v over the keys each query may see).
double window_flops(const LlamaConfig& c, int seq_len) {
  const double per_layer = 2.0 * c.hidden_size * c.q_dim() + 2.0 * c.hidden_size * c.kv_dim() +
                           3.0 * c.hidden_size * c.intermediate_size;
  const double linear = c.num_hidden_layers * per_layer + static_cast<double>(c.vocab_size) * c.hidden_size;
  const double visible_keys = 0.5 * seq_len * (seq_len + 1.0);
  const double attention = 4.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * visible_keys;
  return 2.0 * linear * seq_len + attention;
}

int run_ppl(int argc, char** argv) {
  Args args("ppl", "[--model PATH] [--text FILE] [options]",
            {{"model", "GGUF file or Hugging Face checkpoint directory", kDefaultModel},
             {"text", "UTF-8 text file, evaluated as one token stream", kDefaultText},
             {"seq-len", "tokens per window", "2048"},
             {"max-windows", "evaluate the first N windows (0 = all)", "16"},
             {"chunk", "tokens per forward call inside a window", "512"},
             {"threads", "BLAS threads (0 = all cores)", "0"},
             {"device", "cpu, or cuda (the CUDA engine: FireQ path for a FireQ checkpoint, else BF16)", "cpu"}});
  if (!args.parse(argc, argv)) return 0;
  if (!args.positional().empty()) fail("unexpected argument '", args.positional()[0], "'");
  auto int_flag = [&](const char* name, long long min) {
    const long long v = args.integer(name);
    if (v < min || v > (1 << 30)) fail("--", name, " must be in [", min, ", 2^30], got ", v);
    return static_cast<int>(v);
  };
  const PerplexityOptions options{.seq_len = int_flag("seq-len", 2),
                                  .max_windows = int_flag("max-windows", 0),
                                  .chunk = int_flag("chunk", 1)};
  const int threads = int_flag("threads", 0);
  set_blas_threads(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));

  const std::string model_path = args.str("model"), text_path = args.str("text");
  const std::string text = read_text(text_path);
  auto start = Clock::now();
  EvaluationModel model(model_path);  // a float model, or a FireQ checkpoint with its numerics
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(model.tokenizer_path());
  const std::unique_ptr<Engine> gpu_engine =
      device_engine(args.str("device"), model_path, model.weights(), options.seq_len, options.chunk);
  Engine& engine = gpu_engine ? *gpu_engine : model.engine();
  const LlamaWeights& weights = model.weights();
  std::fprintf(stderr, "[ppl] %s (%s) loaded in %.1f s\n", model_path.c_str(),
               weights.source_description.c_str(), seconds_since(start));
  start = Clock::now();
  const std::vector<int32_t> tokens = tokenizer->encode(text, false);
  std::fprintf(stderr, "[ppl] %s: %zu bytes -> %zu tokens (%.1f s); %zu windows of %d available\n",
               text_path.c_str(), text.size(), tokens.size(), seconds_since(start),
               tokens.size() / options.seq_len, options.seq_len);
  // The CPU engine's efficiency is reported against this machine's sgemm peak.
  const double peak = gpu_engine ? 0.0 : measure_sgemm_peak_gflops();
  if (!gpu_engine)
    std::fprintf(stderr, "[ppl] measured sgemm peak %.1f GFLOP/s (%d BLAS threads)\n", peak, blas_threads());

  const PerplexityResult result = evaluate_perplexity(
      engine, tokens, options, [&](const PerplexityProgress& p) {
        const double rate = p.tokens_done / p.seconds;
        std::fprintf(stderr, "[ppl] window %d/%d: nll %.4f, running ppl %.4f, %.0f tokens/s, ETA %.0f s\n",
                     p.window, p.windows, p.window_nll, std::exp(p.running_nll), rate,
                     (p.windows - p.window) * static_cast<double>(options.seq_len) / rate);
      });
  const double gflops = window_flops(weights.config, options.seq_len) * result.windows / result.seconds * 1e-9;
  std::printf("perplexity %.4f (mean NLL %.5f over %lld predicted tokens, %d windows x %d tokens of %s)\n",
              result.perplexity, result.mean_nll, static_cast<long long>(result.predicted_tokens),
              result.windows, options.seq_len, text_path.c_str());
  const double tokens_per_second = result.processed_tokens / result.seconds;
  if (gpu_engine)
    std::printf("throughput %.1f tokens/s, %.1f GFLOP/s (%s, %.1f s)\n", tokens_per_second, gflops,
                args.str("device").c_str(), result.seconds);
  else
    std::printf("throughput %.1f tokens/s, %.1f GFLOP/s = %.0f%% of the measured sgemm peak %.1f GFLOP/s "
                "(%d threads, %.1f s)\n",
                tokens_per_second, gflops, 100.0 * gflops / peak, peak, blas_threads(), result.seconds);
  return 0;
}

const Register kPpl({"ppl", "perplexity of a text (CPU reference engine, or --device cuda)", run_ppl});

}  // namespace
}  // namespace fireq::cli
