// fireq quantize: FireQ post-training quantization of a Hugging Face Llama checkpoint or a GGUF file
// into a FireQ checkpoint (docs/FORMAT.md). Progress goes to stderr, the summary to stdout.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "command.h"
#include "fireq/error.h"
#include "fireq/model.h"
#include "fireq/quant.h"
#include "fireq/tokenizer.h"

namespace fireq::cli {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string read_calibration_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("calibration text ", path, ": cannot open (run scripts/setup.sh to prepare data/text/)");
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) fail("calibration text ", path, ": empty");
  return text.str();
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux reports KiB
}

int64_t parameter_count(const LlamaWeights& w) {
  int64_t n = w.tok_embeddings.numel() + w.final_norm.numel() + w.lm_head.numel();
  for (const LlamaLayerWeights& l : w.layers)
    for (const FloatTensor* t : {&l.attn_norm, &l.ffn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up,
                                 &l.w_down, &l.bq, &l.bk, &l.bv})
      n += t->numel();
  return n;
}

std::string preset_list() {
  std::string list;
  for (const auto& name : builtin_recipe_names()) list += (list.empty() ? "" : ", ") + name;
  return list;
}

int run_quantize(int argc, char** argv) {
  Args args("quantize", "--model PATH --recipe NAME|FILE --out DIR [options]",
            {{"model", "Hugging Face checkpoint directory or GGUF file (dequantized on load)", ""},
             {"recipe", "preset (" + preset_list() + ") or recipe YAML file", ""},
             {"out", "output directory (must not exist; written atomically)", ""},
             {"calib-text", "calibration text (default: the recipe's calibration.text)", ""},
             {"threads", "BLAS threads (0 = all cores)", "0"},
             {"max-shard-mb", "largest safetensors shard before splitting", "2048"},
             {"print-recipe", "print the resolved recipe as YAML and exit", "", true}});
  if (!args.parse(argc, argv)) return 0;
  if (!args.positional().empty()) fail("unexpected argument '", args.positional()[0], "'");
  const QuantRecipe recipe = load_recipe(args.str("recipe"));
  if (args.on("print-recipe")) {
    std::printf("%s", recipe_to_yaml(recipe).c_str());
    return 0;
  }
  const std::string model_path = args.str("model"), out = args.str("out");
  const long long threads = args.integer("threads"), shard_mb = args.integer("max-shard-mb");
  if (threads < 0 || threads > 1024) fail("--threads must be in [0, 1024], got ", threads);
  if (shard_mb < 1) fail("--max-shard-mb must be positive, got ", shard_mb);
  if (std::filesystem::exists(out)) fail("--out: ", out, " already exists");
  set_blas_threads(threads > 0 ? static_cast<int>(threads)
                               : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));

  const auto start = Clock::now();
  const LlamaWeights weights = load_llama_weights(model_path, [](int step, int total, const std::string& what) {
    std::fprintf(stderr, "\r[quantize] loading %d/%d %-40s", step, total, what.c_str());
  });
  std::fprintf(stderr, "\n[quantize] %s (%s): %d layers, hidden %d, loaded in %.1f s\n", model_path.c_str(),
               weights.source_description.c_str(), weights.config.num_hidden_layers, weights.config.hidden_size,
               seconds_since(start));

  std::vector<int32_t> calibration;
  if (recipe.needs_calibration()) {
    const std::string text_path = args.get("calib-text").value_or(recipe.calib_text);
    const std::string text = read_calibration_text(text_path);
    const std::vector<int32_t> tokens = load_tokenizer(model_path)->encode(text, false);
    calibration = calibration_windows(tokens, recipe.calib_samples, recipe.calib_seq_len, text_path);
    std::fprintf(stderr, "[quantize] calibration: %d x %d tokens from %s (%zu tokens available)\n",
                 recipe.calib_samples, recipe.calib_seq_len, text_path.c_str(), tokens.size());
  }
  std::fprintf(stderr, "[quantize] recipe %s\n", recipe.name.c_str());
  const auto quant_start = Clock::now();
  const QuantizedModel quantized = quantize_model(weights, recipe, calibration, [](const std::string& line) {
    std::fprintf(stderr, "[quantize] %s\n", line.c_str());
  });
  const double quant_seconds = seconds_since(quant_start);

  SaveOptions save;
  save.source = model_path;
  save.max_shard_bytes = static_cast<uint64_t>(shard_mb) << 20;
  const uint64_t bytes = save_quantized_checkpoint(quantized, out, save);
  const double bf16_mib = 2.0 * static_cast<double>(parameter_count(weights)) / (1 << 20);
  std::printf("wrote %s: %.1f MiB (the model in BF16: %.1f MiB, %.2fx smaller)\n", out.c_str(),
              bytes / 1048576.0, bf16_mib, bf16_mib / (bytes / 1048576.0));
  std::printf("recipe %s; quantization %.1f s, total %.1f s, peak memory %.0f MiB\n", recipe.name.c_str(),
              quant_seconds, seconds_since(start), peak_rss_mib());
  return 0;
}

const Register kQuantize({"quantize", "FireQ post-training quantization to a W4A8-KV4 checkpoint", run_quantize});

}  // namespace
}  // namespace fireq::cli
