// SentencePiece models (.model, e.g. Llama-2's BPE with byte fallback) through Debian's
// libsentencepiece: the same code the `sentencepiece` Python package runs.
#include <sentencepiece_processor.h>

#include "fireq/error.h"
#include "loaders.h"

namespace fireq::tokenizer_detail {
namespace {

constexpr std::string_view kWordBoundary = "\xE2\x96\x81";  // U+2581, SentencePiece's space

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // From a .model file (`serialized` empty) or from a serialized ModelProto.
  SentencePieceTokenizer(const std::string& source, const std::string& serialized, bool add_bos)
      : source_(source), add_bos_(add_bos) {
    const auto status = serialized.empty() ? processor_.Load(source_)
                                           : processor_.LoadFromSerializedProto(serialized);
    if (!status.ok()) fail(source_, ": not a SentencePiece model: ", status.ToString());
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    const auto status = processor_.Encode(text, &ids);
    if (!status.ok()) fail(source_, ": encode failed: ", status.ToString());
    std::vector<int32_t> out;
    out.reserve(ids.size() + 1);
    if (add_bos && bos_id() >= 0) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    for (const int32_t id : ids) check_id(id);
    std::string text;
    const auto status = processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok()) fail(source_, ": decode failed: ", status.ToString());
    return text;
  }

  std::string token_to_piece(int32_t id) const override {
    check_id(id);
    if (processor_.IsControl(id)) return "";
    const std::string piece = processor_.IdToPiece(id);
    if (processor_.IsByte(id)) {  // "<0xAB>"
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    std::string text;
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.compare(pos, kWordBoundary.size(), kWordBoundary) == 0) {
        text += ' ';
        pos += kWordBoundary.size();
      } else {
        text += piece[pos++];
      }
    }
    return text;
  }

  int32_t bos_id() const override { return processor_.bos_id(); }
  bool add_bos_by_default() const override { return add_bos_ && bos_id() >= 0; }
  int32_t eos_id() const override { return processor_.eos_id(); }
  int32_t vocab_size() const override { return processor_.GetPieceSize(); }

 private:
  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size()) {
      fail(source_, ": token id ", id, " is not in the vocabulary (size ", vocab_size(), ")");
    }
  }

  std::string source_;
  bool add_bos_;
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::filesystem::path& path) {
  return std::make_unique<SentencePieceTokenizer>(path.string(), "", true);
}

std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& serialized,
                                                    const std::string& source, bool add_bos) {
  if (serialized.empty()) fail(source, ": empty SentencePiece model");
  return std::make_unique<SentencePieceTokenizer>(source, serialized, add_bos);
}

}  // namespace fireq::tokenizer_detail
