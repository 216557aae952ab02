// The FireQ path on the real model, in two halves because its checkpoint cannot reach the device
// whole (docs/ENGINE.md, "Correctness on the real model"):
//
//   fireq_e2e_check reference --checkpoint DIR --layers 0-7,26-29 --out REF
//     (here, CPU) keeps the embedding, the listed blocks, the final norm and the tied
//     lm_head of a FireQ checkpoint, restricted to the vocabulary of the evaluation windows (ids
//     renumbered 0..V'-1, so the embedding shrinks from 49152 to a few hundred rows); writes that
//     checkpoint to REF/model, and the windows' ids and the CPU engine's logits with the simulated
//     numerics (quant.h EvaluationModel) to REF/reference.bin, its perplexity to REF/reference.json.
//
//   fireq_e2e_check emulate --reference REF [--tokens N] [--save]
//     (here, CPU) the same windows through the FireQ path's emulation (the kernels' CPU references op
//     for op: BF16 residual stream, BF16 SwiGLU output, FP8 P tiles) against the simulation; with
//     --save (and N = the window length) writes its logits to REF/emulation.bin.
//
//   fireq_e2e_check gpu --reference REF [--out FILE.json]
//     (on the device) runs the same windows on the CUDA engine's FireQ path twice: each window as
//     one prefill step, and as a prefill of its first half then one decode step per token (split-KV
//     attention, CUDA graphs); prints max logit difference, relative RMS, top-1 agreement and the
//     perplexity against the CPU's simulation and, where REF/emulation.bin exists, against the
//     emulation of the GPU's own numerics.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fireq/cuda_engine.h"
#include "fireq/error.h"
#include "fireq/quant.h"
#include "fireq/tokenizer.h"
#include "../../tests/runtime_cuda/logit_agreement.h"

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace fireq {
namespace {

struct Reference {
  int windows = 0, window_tokens = 0, vocab = 0;
  std::vector<int32_t> ids;     // [windows][window_tokens], renumbered
  std::vector<float> logits;    // [windows][window_tokens][vocab], CPU
};

std::map<std::string, std::string> flags(int argc, char** argv) {
  std::map<std::string, std::string> out;
  for (int i = 2; i < argc; ++i) {
    const std::string key = argv[i];
    if (key.rfind("--", 0) != 0) fail("fireq_e2e_check: expected --flag [value], got '", key, "'");
    const bool has_value = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
    out[key.substr(2)] = has_value ? argv[++i] : "";
  }
  return out;
}

// "0-7,26-29" -> 0, 1, ..., 7, 26, ..., 29.
std::vector<int> layer_list(const std::string& text) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    const size_t dash = item.find('-');
    const int first = std::stoi(item.substr(0, dash));
    const int last = dash == std::string::npos ? first : std::stoi(item.substr(dash + 1));
    for (int l = first; l <= last; ++l) out.push_back(l);
    start = end + 1;
  }
  return out;
}

std::string flag(const std::map<std::string, std::string>& f, const std::string& name, const std::string& fallback = "") {
  const auto it = f.find(name);
  if (it != f.end()) return it->second;
  if (fallback.empty()) fail("fireq_e2e_check: --", name, " is required");
  return fallback;
}

// Mean NLL of each window's next tokens under `logits`, in double.
double mean_nll(const Reference& r, const std::vector<float>& logits) {
  double total = 0;
  int64_t count = 0;
  for (int w = 0; w < r.windows; ++w)
    for (int t = 0; t + 1 < r.window_tokens; ++t) {
      const float* row = logits.data() + (int64_t{w} * r.window_tokens + t) * r.vocab;
      const double top = *std::max_element(row, row + r.vocab);
      double sum = 0;
      for (int i = 0; i < r.vocab; ++i) sum += std::exp(row[i] - top);
      total += top + std::log(sum) - row[r.ids[int64_t{w} * r.window_tokens + t + 1]];
      ++count;
    }
  return total / count;
}

void write_reference(const Reference& r, const fs::path& path) {
  std::ofstream out(path, std::ios::binary);
  const int32_t header[3] = {r.windows, r.window_tokens, r.vocab};
  out.write(reinterpret_cast<const char*>(header), sizeof header);
  out.write(reinterpret_cast<const char*>(r.ids.data()), r.ids.size() * 4);
  out.write(reinterpret_cast<const char*>(r.logits.data()), r.logits.size() * 4);
  if (!out) fail(path.string(), ": write failed");
}

Reference read_reference(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  int32_t header[3];
  in.read(reinterpret_cast<char*>(header), sizeof header);
  Reference r;
  r.windows = header[0];
  r.window_tokens = header[1];
  r.vocab = header[2];
  if (!in || r.windows <= 0 || r.window_tokens <= 1 || r.vocab <= 0) fail(path.string(), ": bad header");
  r.ids.resize(int64_t{r.windows} * r.window_tokens);
  r.logits.resize(r.ids.size() * r.vocab);
  in.read(reinterpret_cast<char*>(r.ids.data()), r.ids.size() * 4);
  in.read(reinterpret_cast<char*>(r.logits.data()), r.logits.size() * 4);
  if (!in) fail(path.string(), ": truncated");
  return r;
}

int make_reference(const std::map<std::string, std::string>& f) {
  const fs::path checkpoint = flag(f, "checkpoint"), out = flag(f, "out");
  const std::vector<int> layers = layer_list(flag(f, "layers", "0-7"));
  Reference r;
  r.windows = std::stoi(flag(f, "windows", "4"));
  r.window_tokens = std::stoi(flag(f, "window", "512"));
  const std::string text_path = flag(f, "text", "data/text/wiki.eval.txt");
  if (fs::exists(out)) fail(out.string(), " exists");

  QuantizedModel model = load_quantized_checkpoint(checkpoint);
  const auto tokenizer = load_tokenizer(checkpoint_tokenizer_path(checkpoint));
  std::ifstream text_file(text_path, std::ios::binary);
  std::string text(400000, '\0');
  text_file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(text_file.gcount()));
  const std::vector<int32_t> tokens = tokenizer->encode(text.substr(0, complete_utf8_prefix(text)), false);
  const int64_t needed = int64_t{r.windows} * r.window_tokens;
  if (static_cast<int64_t>(tokens.size()) < needed)
    fail(text_path, ": ", tokens.size(), " tokens, fewer than ", needed);

  // The windows' vocabulary, renumbered in increasing id order.
  std::vector<int32_t> used(tokens.begin(), tokens.begin() + needed);
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  std::map<int32_t, int32_t> renumber;
  for (size_t i = 0; i < used.size(); ++i) renumber[used[i]] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < needed; ++i) r.ids.push_back(renumber[tokens[i]]);
  r.vocab = static_cast<int>(used.size());

  std::vector<QuantizedLayer> kept;
  for (const int l : layers) {
    if (l < 0 || l >= model.config.num_hidden_layers) fail("--layers: ", l, " outside 0..", model.config.num_hidden_layers - 1);
    kept.push_back(model.layers[l]);
  }
  if (!model.lm_head.empty()) fail(checkpoint.string(), ": an untied lm_head is not handled here");
  const int hidden = model.config.hidden_size;
  FloatTensor embeddings;
  embeddings.shape = {r.vocab, hidden};
  for (const int32_t id : used)
    embeddings.data.insert(embeddings.data.end(), model.tok_embeddings.data.begin() + int64_t{id} * hidden,
                           model.tok_embeddings.data.begin() + int64_t{id + 1} * hidden);
  model.tok_embeddings = std::move(embeddings);
  model.layers = std::move(kept);
  model.config.num_hidden_layers = static_cast<int>(layers.size());
  model.config.vocab_size = r.vocab;
  model.config.bos_token_id = model.config.eos_token_id = -1;
  model.config.eos_token_ids.clear();
  model.source_description += " (blocks " + flag(f, "layers", "0-7") + ", " + std::to_string(r.vocab) +
                              "-token vocabulary of the evaluation windows)";

  fs::create_directories(out);
  // A source that is no directory: config.json is written from the truncated config, not copied.
  save_quantized_checkpoint(model, out / "model", SaveOptions{.source = checkpoint / "model.safetensors"});
  EvaluationModel simulated(model);
  for (int w = 0; w < r.windows; ++w) {
    simulated.engine().reset();
    const std::vector<float> logits = simulated.engine().forward(
        std::span(r.ids).subspan(int64_t{w} * r.window_tokens, r.window_tokens), LogitsFor::kAll);
    r.logits.insert(r.logits.end(), logits.begin(), logits.end());
    std::fprintf(stderr, "[reference] window %d/%d\n", w + 1, r.windows);
  }
  write_reference(r, out / "reference.bin");
  const double nll = mean_nll(r, r.logits);
  const Json summary = {{"checkpoint", checkpoint.string()}, {"layers", flag(f, "layers", "0-7")}, {"vocab", r.vocab},
                        {"windows", r.windows}, {"window_tokens", r.window_tokens}, {"text", text_path},
                        {"cpu_mean_nll", nll}, {"cpu_ppl", std::exp(nll)}};
  std::ofstream(out / "reference.json") << summary.dump(1) << "\n";
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

using testing::compare_logits;
using Agreement = testing::LogitAgreement;

// The first `tokens` tokens of every window through the FireQ path's CPU emulation (the kernels'
// references, op for op) against the CPU engine's simulated numerics: what the GPU's own numerics
// (BF16 residual stream, BF16 SwiGLU output, FP8 P tiles) cost against the simulation.
int run_emulation(const std::map<std::string, std::string>& f) {
  const fs::path dir = flag(f, "reference");
  const Reference r = read_reference(dir / "reference.bin");
  const QuantizedModel model = load_quantized_checkpoint(dir / "model");
  const int tokens = std::min(r.window_tokens, std::stoi(flag(f, "tokens", "128")));
  std::vector<float> emulated, simulated;
  for (int w = 0; w < r.windows; ++w) {
    const auto window = std::span(r.ids).subspan(int64_t{w} * r.window_tokens, tokens);
    const std::vector<float> e = fireq_path_reference_logits(model, window);
    emulated.insert(emulated.end(), e.begin(), e.end());
    const auto cpu = r.logits.begin() + int64_t{w} * r.window_tokens * r.vocab;
    simulated.insert(simulated.end(), cpu, cpu + int64_t{tokens} * r.vocab);
    std::fprintf(stderr, "[emulation] window %d/%d\n", w + 1, r.windows);
  }
  const Agreement a = compare_logits(emulated, simulated, r.vocab);
  std::printf("[emulation] %lld rows: max |logit diff| %.4f (max |logit| %.2f), relative RMS %.5f, top-1 agreement %.2f%%\n",
              static_cast<long long>(a.rows), a.max_abs_diff, a.max_abs_ref, a.relative_rms(),
              100.0 * a.top1());
  if (tokens == r.window_tokens)
    std::printf("[emulation] PPL emulation %.4f vs CPU simulation %.4f\n", std::exp(mean_nll(r, emulated)),
                std::exp(mean_nll(r, r.logits)));
  if (f.count("save")) {
    if (tokens != r.window_tokens) fail("--save needs --tokens ", r.window_tokens, " (whole windows)");
    Reference e = r;
    e.logits = std::move(emulated);
    write_reference(e, dir / "emulation.bin");
    std::printf("[emulation] wrote %s\n", (dir / "emulation.bin").string().c_str());
  }
  return 0;
}

int run_gpu(const std::map<std::string, std::string>& f) {
  const fs::path dir = flag(f, "reference");
  const Reference r = read_reference(dir / "reference.bin");
  const QuantizedModel model = load_quantized_checkpoint(dir / "model");
  if (model.config.vocab_size != r.vocab) fail("reference vocabulary ", r.vocab, " != checkpoint's ", model.config.vocab_size);
  CudaEngine engine(model, {.max_context = r.window_tokens, .max_step_tokens = r.window_tokens,
                            .max_sequences = 1, .max_logit_rows = r.window_tokens});
  Json result = {{"reference", dir.string()}, {"layers", model.config.num_hidden_layers}, {"vocab", r.vocab},
                 {"windows", r.windows}, {"window_tokens", r.window_tokens}};
  const double cpu_nll = mean_nll(r, r.logits);
  result["cpu_ppl"] = std::exp(cpu_nll);
  std::optional<Reference> emulation;
  if (fs::exists(dir / "emulation.bin")) {
    emulation = read_reference(dir / "emulation.bin");
    if (emulation->ids != r.ids || emulation->vocab != r.vocab) fail(dir.string(), "/emulation.bin: other windows than reference.bin");
    result["emulation_ppl"] = std::exp(mean_nll(r, emulation->logits));
  }
  bool pass = true;
  for (const std::string mode : {"prefill", "prefill+decode"}) {
    std::vector<float> logits;
    for (int w = 0; w < r.windows; ++w) {
      engine.reset();
      const auto window = std::span(r.ids).subspan(int64_t{w} * r.window_tokens, r.window_tokens);
      const int first = mode == "prefill" ? r.window_tokens : r.window_tokens / 2;
      const std::vector<float> head = engine.forward(window.first(first), LogitsFor::kAll);
      logits.insert(logits.end(), head.begin(), head.end());
      for (int t = first; t < r.window_tokens; ++t) {
        const std::vector<float> row = engine.forward(window.subspan(t, 1), LogitsFor::kLast);
        logits.insert(logits.end(), row.begin(), row.end());
      }
    }
    const Agreement a = compare_logits(logits, r.logits, r.vocab);
    const double gpu_ppl = std::exp(mean_nll(r, logits)), cpu_ppl = std::exp(cpu_nll);
    const double top1 = a.top1();
    const double ppl_gap = std::fabs(gpu_ppl / cpu_ppl - 1);
    const bool ok = top1 >= 0.99 && ppl_gap <= 0.005;
    pass &= ok;
    std::printf("[real-model] %s: %lld rows, max |logit diff| %.4f (max |logit| %.2f), relative RMS %.5f, top-1 "
                "agreement %.2f%%, PPL GPU %.4f vs CPU %.4f (%+.3f%%): %s\n",
                mode.c_str(), static_cast<long long>(a.rows), a.max_abs_diff, a.max_abs_ref,
                a.relative_rms(), 100 * top1, gpu_ppl, cpu_ppl, 100 * (gpu_ppl / cpu_ppl - 1),
                ok ? "meets top-1 >= 99% and PPL within 0.5%" : "MISSES top-1 >= 99% or PPL within 0.5%");
    result[mode] = {{"rows", a.rows}, {"max_abs_logit_diff", a.max_abs_diff}, {"max_abs_logit", a.max_abs_ref},
                    {"relative_rms", a.relative_rms()}, {"top1_agreement", top1},
                    {"gpu_ppl", gpu_ppl}, {"ppl_relative_gap", gpu_ppl / cpu_ppl - 1}, {"meets_targets", ok}};
    if (emulation) {
      const Agreement e = compare_logits(logits, emulation->logits, r.vocab);
      const double emulated_ppl = std::exp(mean_nll(r, emulation->logits));
      const double e_top1 = e.top1();
      std::printf("[real-model] %s vs the CPU emulation of the GPU numerics: max |logit diff| %.4f, relative RMS %.5f, "
                  "top-1 agreement %.2f%%, PPL GPU %.4f vs emulation %.4f (%+.3f%%)\n",
                  mode.c_str(), e.max_abs_diff, e.relative_rms(), 100 * e_top1, gpu_ppl,
                  emulated_ppl, 100 * (gpu_ppl / emulated_ppl - 1));
      result[mode]["vs_emulation"] = {{"max_abs_logit_diff", e.max_abs_diff},
                                      {"relative_rms", e.relative_rms()},
                                      {"top1_agreement", e_top1}, {"ppl_relative_gap", gpu_ppl / emulated_ppl - 1}};
    }
  }
  result["graph_replays"] = engine.graph_replays();
  if (const auto it = f.find("out"); it != f.end()) std::ofstream(it->second) << result.dump(1) << "\n";
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace fireq

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "reference") return fireq::make_reference(fireq::flags(argc, argv));
    if (mode == "gpu") return fireq::run_gpu(fireq::flags(argc, argv));
    if (mode == "emulate") return fireq::run_emulation(fireq::flags(argc, argv));
    std::fprintf(stderr, "usage: fireq_e2e_check reference --checkpoint DIR --out REF [--layers 0-7,26-29] [--windows 4] "
                         "[--window 512] [--text FILE]\n       fireq_e2e_check emulate --reference REF [--tokens N] [--save]\n"
                         "       fireq_e2e_check gpu --reference REF [--out FILE.json]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fireq_e2e_check: %s\n", e.what());
    return 1;
  }
}
