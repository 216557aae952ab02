// fireq.Tokenizer and fireq.Model: a GGUF / Hugging Face / FireQ checkpoint on the CPU reference
// engine (FireQ checkpoints with the GPU kernels' numerics simulated, as `fireq ppl` runs them) or
// on the CUDA engine (device "cuda": the FireQ path's kernels for a FireQ checkpoint, else the BF16
// path, as `--device cuda` runs them), with logits, streaming generation and perplexity. Long calls
// release the GIL; one mutex per model keeps Python threads from running its single KV cache
// concurrently.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "fireq/engine.h"
#ifdef FIREQ_HAVE_CUDA_RUNTIME
#include "fireq/cuda_engine.h"
#endif
#include "fireq/error.h"
#include "fireq/quant.h"
#include "fireq/sampling.h"
#include "fireq/tokenizer.h"

namespace fireq::python {
namespace {

namespace fs = std::filesystem;

// Token bytes as Python text; a UTF-8 character cut short (only possible at the very end of a
// generation) becomes U+FFFD instead of an exception.
nb::str utf8_text(const std::string& bytes) {
  PyObject* text = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
  if (!text) throw nb::python_error();
  return nb::steal<nb::str>(text);
}

std::shared_ptr<const Tokenizer> load_shared_tokenizer(const fs::path& path) {
  nb::gil_scoped_release unlocked;
  return std::shared_ptr<const Tokenizer>(load_tokenizer(path));
}

// The longest step the CUDA engine is planned for; Model.logits feeds longer inputs in steps of
// this size (the KV cache carries over between them).
constexpr int kGpuStepTokens = 2048;

std::unique_ptr<Engine> open_device_engine(const std::string& device, const fs::path& path,
                                           const LlamaWeights& weights, int max_context) {
  if (device == "cpu") return nullptr;
  if (device != "cuda") fail("Model: device '", device, "' is not a device (cpu, cuda)");
#ifdef FIREQ_HAVE_CUDA_RUNTIME
  return open_cuda_engine(path, weights,
                          {.max_context = max_context, .max_step_tokens = kGpuStepTokens, .max_sequences = 1,
                           .max_logit_rows = kGpuStepTokens, .print_plan = false});
#else
  fail("Model: device 'cuda': this build of fireq has no CUDA (nvcc was not found when it was built)");
#endif
}

class Model {
 public:
  Model(const fs::path& path, int max_context, const std::string& device)
      : model_(path, max_context), gpu_(open_device_engine(device, path, model_.weights(), max_context)) {}

  std::shared_ptr<const Tokenizer> tokenizer() {
    if (!tokenizer_) tokenizer_ = load_shared_tokenizer(model_.tokenizer_path());
    return tokenizer_;
  }
  Engine& engine() { return gpu_ ? *gpu_ : static_cast<Engine&>(model_.engine()); }
  std::string device() const { return gpu_ ? "cuda" : "cpu"; }
  std::mutex& mutex() { return mutex_; }
  const LlamaWeights& weights() const { return model_.weights(); }

  NumpyArray<float> logits(const std::vector<int32_t>& ids) {
    if (ids.empty()) fail("Model.logits: ids is empty");
    std::vector<float> all;
    {
      nb::gil_scoped_release unlocked;
      std::lock_guard lock(mutex_);
      engine().reset();
      for (size_t start = 0; start < ids.size(); start += kGpuStepTokens) {
        const std::span<const int32_t> step =
            std::span(ids).subspan(start, std::min<size_t>(kGpuStepTokens, ids.size() - start));
        const std::vector<float> logits = engine().forward(step, LogitsFor::kAll);
        all.insert(all.end(), logits.begin(), logits.end());
      }
    }
    return to_numpy(std::move(all), {ids.size(), static_cast<size_t>(weights().config.vocab_size)});
  }

  double perplexity(const std::string& text, int seq_len, int max_windows, int chunk, bool verbose) {
    const std::shared_ptr<const Tokenizer> tok = tokenizer();
    nb::gil_scoped_release unlocked;
    std::lock_guard lock(mutex_);
    const std::vector<int32_t> tokens = tok->encode(text, false);
    if (seq_len < 2) fail("Model.perplexity: seq_len must be at least 2, got ", seq_len);
    if (static_cast<int64_t>(tokens.size()) < seq_len)
      fail("Model.perplexity: the text has ", tokens.size(), " tokens, fewer than one window of seq_len ", seq_len);
    const PerplexityOptions options{.seq_len = seq_len, .max_windows = max_windows, .chunk = chunk};
    const PerplexityResult result = evaluate_perplexity(engine(), tokens, options, [&](const PerplexityProgress& p) {
      if (verbose)
        std::fprintf(stderr, "[fireq ppl] window %d/%d: nll %.4f, running ppl %.4f\n", p.window, p.windows,
                     p.window_nll, std::exp(p.running_nll));
    });
    return result.perplexity;
  }

 private:
  EvaluationModel model_;
  std::unique_ptr<Engine> gpu_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::mutex mutex_;
};

struct GenerationOptions {
  int max_new_tokens = 64;
  SamplingOptions sampling;
  bool add_bos = false;
};

// Generation as an iterator of text pieces, each made of whole UTF-8 characters. It owns the
// model's KV cache while it runs: any other use of the model in between is detected and refused.
class TextStream {
 public:
  TextStream(Model& model, const std::string& prompt, const GenerationOptions& options)
      : model_(model), tokenizer_(model.tokenizer()), sampler_(options.sampling),
        max_new_tokens_(options.max_new_tokens) {
    if (max_new_tokens_ < 1) fail("generate: max_new_tokens must be at least 1, got ", max_new_tokens_);
    prompt_ = tokenizer_->encode(prompt, options.add_bos);
    if (prompt_.empty()) fail("generate: the prompt encodes to no tokens");
    const int context = model.engine().max_context();
    if (static_cast<int64_t>(prompt_.size()) + max_new_tokens_ > context)
      fail("generate: prompt (", prompt_.size(), " tokens) + max_new_tokens ", max_new_tokens_,
           " exceed the model's context of ", context, " tokens");
  }

  // The next piece of text, or nothing at the end (EOS or max_new_tokens).
  std::optional<std::string> next() {
    std::lock_guard lock(model_.mutex());
    while (!finished_) {
      const int32_t token = sampler_.sample(next_logits());
      tokens_.push_back(token);
      finished_ = token == tokenizer_->eos_id() || static_cast<int>(tokens_.size()) == max_new_tokens_;
      if (token == tokenizer_->eos_id()) break;
      pending_ += tokenizer_->token_to_piece(token);
      const size_t ready = complete_utf8_prefix(pending_);
      if (ready > 0) {
        std::string piece = pending_.substr(0, ready);
        pending_.erase(0, ready);
        return piece;
      }
    }
    if (pending_.empty()) return std::nullopt;
    return std::exchange(pending_, {});  // a character cut short by the end
  }

  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  std::span<const float> next_logits() {
    Engine& engine = model_.engine();
    if (tokens_.empty()) {
      engine.reset();
      logits_ = engine.forward(prompt_, LogitsFor::kLast);
    } else {
      if (engine.position() != static_cast<int>(prompt_.size() + tokens_.size()) - 1)
        fail("generate: the model was used by another call while this generation was running");
      logits_ = engine.forward(std::span(&tokens_.back(), 1), LogitsFor::kLast);
    }
    return logits_;
  }

  Model& model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  Sampler sampler_;
  int max_new_tokens_;
  std::vector<int32_t> prompt_, tokens_;
  std::vector<float> logits_;
  std::string pending_;
  bool finished_ = false;
};

void bind_tokenizer(nb::module_& m) {
  nb::class_<Tokenizer>(m, "Tokenizer")
      .def("encode", &Tokenizer::encode, nb::arg("text"), nb::arg("add_bos") = false,
           nb::call_guard<nb::gil_scoped_release>(), "text -> token ids")
      .def("decode", [](const Tokenizer& t, const std::vector<int32_t>& ids) { return utf8_text(t.decode(ids)); },
           nb::arg("ids"), "token ids -> text")
      .def("token_to_piece",
           [](const Tokenizer& t, int32_t id) {
             const std::string piece = t.token_to_piece(id);
             return nb::bytes(piece.data(), piece.size());
           },
           nb::arg("id"), "the bytes one token contributes (may be part of a UTF-8 character)")
      .def_prop_ro("bos_id", &Tokenizer::bos_id)
      .def_prop_ro("eos_id", &Tokenizer::eos_id)
      .def_prop_ro("vocab_size", &Tokenizer::vocab_size)
      .def_prop_ro("add_bos_by_default", &Tokenizer::add_bos_by_default);
  m.def("load_tokenizer", &load_shared_tokenizer, nb::arg("path"),
        "tokenizer.json, SentencePiece .model, a directory holding one, or a .gguf file");
}

}  // namespace

void bind_model(nb::module_& m) {
  bind_tokenizer(m);

  nb::class_<TextStream>(m, "TextStream")
      .def("__iter__", [](nb::handle self) { return self; })
      .def("__next__",
           [](TextStream& s) {
             std::optional<std::string> piece;
             {
               nb::gil_scoped_release unlocked;
               piece = s.next();
             }
             if (!piece) throw nb::stop_iteration();
             return utf8_text(*piece);
           })
      .def_prop_ro("tokens", &TextStream::tokens, "the ids generated so far");

  nb::class_<Model>(m, "Model")
      .def("__init__",
           [](Model* self, const fs::path& path, int max_context, const std::string& device) {
             nb::gil_scoped_release unlocked;
             new (self) Model(path, max_context, device);
           },
           nb::arg("path"), nb::arg("max_context") = 0, nb::arg("device") = "cpu")
      .def_prop_ro("device", &Model::device)
      .def_prop_ro("tokenizer", &Model::tokenizer)
      .def_prop_ro("config_json", [](const Model& m) { return llama_config_json(m.weights().config); })
      .def_prop_ro("source_description", [](const Model& m) { return m.weights().source_description; })
      .def_prop_ro("max_context", [](Model& m) { return m.engine().max_context(); })
      .def("logits", &Model::logits, nb::arg("ids"))
      .def("perplexity", &Model::perplexity, nb::arg("text"), nb::arg("seq_len"), nb::arg("max_windows"),
           nb::arg("chunk"), nb::arg("verbose"))
      .def("stream",
           [](Model& model, const std::string& prompt, int max_new_tokens, double temperature, int top_k,
              double top_p, uint64_t seed, bool add_bos) {
             GenerationOptions options{.max_new_tokens = max_new_tokens,
                                       .sampling = {.temperature = temperature, .top_k = top_k,
                                                    .top_p = top_p, .seed = seed},
                                       .add_bos = add_bos};
             return new TextStream(model, prompt, options);
           },
           nb::arg("prompt"), nb::arg("max_new_tokens"), nb::arg("temperature"), nb::arg("top_k"),
           nb::arg("top_p"), nb::arg("seed"), nb::arg("add_bos"), nb::keep_alive<0, 1>(),
           nb::rv_policy::take_ownership);
}

}  // namespace fireq::python
