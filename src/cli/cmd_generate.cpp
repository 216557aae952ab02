// fireq generate: text generation with the CPU reference engine (a float model, or a FireQ
// checkpoint with its quantized numerics simulated). The text goes to stdout as it is produced
// (whole UTF-8 characters only); load time, TTFT and decode speed go to stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "command.h"
#include "fireq/engine.h"
#include "fireq/error.h"
#include "fireq/gguf.h"
#include "fireq/model.h"
#include "fireq/quant.h"
#include "fireq/sampling.h"
#include "fireq/tokenizer.h"

namespace fireq::cli {
namespace {

constexpr const char* kDefaultModel = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The id of a special token written as text, or -1 when the tokenizer does not have it as one.
int32_t special_token(const Tokenizer& tokenizer, const std::string& text) {
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  return ids.size() == 1 && tokenizer.decode(ids) == text ? ids[0] : -1;
}

// The model's chat template (Jinja source): GGUF metadata, or tokenizer_config.json beside a
// tokenizer.json. Empty when there is none.
std::string chat_template(const std::filesystem::path& tokenizer_path) {
  if (tokenizer_path.extension() == ".gguf")
    return GgufFile(tokenizer_path).get_string("tokenizer.chat_template", "");
  const std::filesystem::path config = tokenizer_path.parent_path() / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config)) return "";
  std::ifstream in(config);
  const auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return json.is_object() && json.contains("chat_template") && json["chat_template"].is_string()
             ? json["chat_template"].get<std::string>()
             : "";
}

// The system message a ChatML template inserts when the conversation has none (SmolLM2's
// "You are a helpful AI assistant named SmolLM, ..."): a literal
// '<|im_start|>system\n...<|im_end|>' in the template. Empty when there is none.
std::string default_system_message(const std::string& jinja) {
  static const std::regex literal(R"(<\|im_start\|>system(?:\\n|\n)([^'"{}]*?)<\|im_end\|>)");
  std::smatch match;
  return std::regex_search(jinja, match, literal) ? match[1].str() : "";
}

// One user turn and the assistant's header, in the chat format the tokenizer's special tokens
// announce (ChatML as in SmolLM2/Qwen, or Llama 3's header tokens).
std::string chat_prompt(const Tokenizer& tokenizer, const std::string& system, const std::string& user) {
  if (special_token(tokenizer, "<|im_start|>") >= 0) {
    std::string text;
    if (!system.empty()) text += "<|im_start|>system\n" + system + "<|im_end|>\n";
    return text + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
  }
  if (special_token(tokenizer, "<|start_header_id|>") >= 0) {
    std::string text = "<|begin_of_text|>";
    if (!system.empty()) text += "<|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>";
    return text + "<|start_header_id|>user<|end_header_id|>\n\n" + user +
           "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  fail("--chat: the tokenizer has neither ChatML (<|im_start|>) nor Llama 3 (<|start_header_id|>) "
       "special tokens; pass the formatted prompt without --chat");
}

// Writes token pieces to stdout as soon as they form whole UTF-8 characters.
class Utf8Stream {
 public:
  void add(const std::string& piece) {
    pending_ += piece;
    const size_t ready = complete_utf8_prefix(pending_);
    if (ready == 0) return;
    std::fwrite(pending_.data(), 1, ready, stdout);
    std::fflush(stdout);
    pending_.erase(0, ready);
  }
  void finish() {
    std::fwrite(pending_.data(), 1, pending_.size(), stdout);  // a truncated character, as is
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }

 private:
  std::string pending_;
};

int run_generate(int argc, char** argv) {
  Args args("generate", "--prompt TEXT [options]",
            {{"model", "GGUF file or Hugging Face checkpoint directory", kDefaultModel},
             {"prompt", "text to continue (with --chat: the user's message)", ""},
             {"max-new-tokens", "tokens to generate at most", "64"},
             {"temperature", "0 = greedy; otherwise softmax(logits / T)", "0"},
             {"top-k", "sample among the k most likely tokens (0 = all)", "0"},
             {"top-p", "sample within the smallest set of probability >= p", "1"},
             {"seed", "random seed for sampling", "0"},
             {"chat", "wrap the prompt in the model's chat format (ChatML or Llama 3)", "", true},
             {"system", "system message for --chat (default: the chat template's own, if any)", ""},
             {"bos", "prepend the tokenizer's BOS token", "", true},
             {"threads", "BLAS threads (0 = all cores)", "0"},
             {"device", "cpu, or cuda (the CUDA engine: FireQ path for a FireQ checkpoint, else BF16)", "cpu"}});
  if (!args.parse(argc, argv)) return 0;
  if (!args.positional().empty()) fail("unexpected argument '", args.positional()[0], "'");
  const std::string prompt = args.str("prompt");
  const long long max_new = args.integer("max-new-tokens");
  if (max_new < 1) fail("--max-new-tokens must be at least 1, got ", max_new);
  const long long seed = args.integer("seed");
  if (seed < 0) fail("--seed must be >= 0, got ", seed);
  const long long top_k = args.integer("top-k");
  if (top_k < 0 || top_k > (1 << 30)) fail("--top-k must be in [0, 2^30], got ", top_k);
  Sampler sampler({.temperature = args.number("temperature"), .top_k = static_cast<int>(top_k),
                   .top_p = args.number("top-p"), .seed = static_cast<uint64_t>(seed)});
  const long long threads = args.integer("threads");
  if (threads < 0) fail("--threads must be >= 0, got ", threads);
  set_blas_threads(threads > 0 ? static_cast<int>(threads)
                               : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));

  const std::string model_path = args.str("model");
  const auto load_start = Clock::now();
  EvaluationModel model(model_path);  // a float model, or a FireQ checkpoint with its numerics
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(model.tokenizer_path());
  const std::unique_ptr<Engine> gpu_engine =
      device_engine(args.str("device"), model_path, model.weights(), 0, 2048);
  Engine& engine = gpu_engine ? *gpu_engine : model.engine();
  const LlamaConfig& config = model.weights().config;
  std::fprintf(stderr, "[generate] %s: %d layers, hidden %d, vocab %d (%s), loaded in %.1f s\n",
               model_path.c_str(), config.num_hidden_layers, config.hidden_size, config.vocab_size,
               model.weights().source_description.c_str(), seconds_since(load_start));

  std::string text = prompt;
  if (args.on("chat")) {
    const auto system = args.get("system");
    text = chat_prompt(*tokenizer, system ? *system : default_system_message(chat_template(model.tokenizer_path())),
                       prompt);
  }
  std::vector<int32_t> ids = tokenizer->encode(text, args.on("bos"));
  if (ids.empty()) fail("--prompt: the prompt encodes to no tokens");
  if (static_cast<long long>(ids.size()) + max_new > engine.max_context())
    fail("prompt (", ids.size(), " tokens) + --max-new-tokens ", max_new, " exceed the context of ",
         engine.max_context(), " tokens");
  // Generation ends at EOS, and in chat also at the end-of-turn token.
  std::vector<int32_t> stop = {tokenizer->eos_id()};
  if (args.on("chat"))
    for (const char* end : {"<|im_end|>", "<|eot_id|>"}) stop.push_back(special_token(*tokenizer, end));

  Utf8Stream out;
  const auto start = Clock::now();
  std::vector<float> logits = engine.forward(ids, LogitsFor::kLast);
  double ttft = 0;
  int generated = 0;
  for (;;) {
    const int32_t next = sampler.sample(logits);
    ++generated;
    if (generated == 1) ttft = seconds_since(start);
    if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
    out.add(tokenizer->token_to_piece(next));
    if (generated == max_new) break;
    logits = engine.forward(std::span(&next, 1), LogitsFor::kLast);
  }
  out.finish();
  const double decode_seconds = seconds_since(start) - ttft;
  std::fprintf(stderr, "[generate] prompt %zu tokens, TTFT %.1f ms (%.0f prompt tokens/s); ", ids.size(),
               ttft * 1e3, ids.size() / ttft);
  if (generated > 1)
    std::fprintf(stderr, "%d more tokens at %.1f tokens/s (%d BLAS threads)\n", generated - 1,
                 (generated - 1) / decode_seconds, blas_threads());
  else
    std::fprintf(stderr, "no further tokens\n");
  return 0;
}

const Register kGenerate({"generate", "generate text with the CPU reference engine", run_generate});

}  // namespace
}  // namespace fireq::cli
