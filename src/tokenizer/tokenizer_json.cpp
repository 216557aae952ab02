// Hugging Face tokenizer.json -> BpeTokenizerSpec: byte-level BPE, or BPE over UTF-8 characters
// with byte fallback as Llama-2's tokenizer.json emulates SentencePiece.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bpe_tokenizer.h"
#include "fireq/error.h"
#include "loaders.h"

namespace fireq::tokenizer_detail {
namespace {

using nlohmann::json;

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

bool flag(const json& object, const char* key, bool fallback) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  return it->get<bool>();
}

// The type name of a normalizer / pre-tokenizer / decoder object ("" for null).
std::string type_of(const json& component) {
  if (component.is_null()) return "";
  return component.at("type").get<std::string>();
}

void parse_pre_tokenizer(const json& component, const std::string& source,
                         std::vector<PreTokenizeStep>& steps) {
  const std::string type = type_of(component);
  if (type.empty()) return;
  if (type == "Sequence") {
    for (const json& child : component.at("pretokenizers")) parse_pre_tokenizer(child, source, steps);
  } else if (type == "ByteLevel") {
    steps.push_back(ByteLevelStep{flag(component, "add_prefix_space", true),
                                  flag(component, "use_regex", true)});
  } else if (type == "Digits") {
    steps.push_back(DigitsStep{flag(component, "individual_digits", false)});
  } else if (type == "Metaspace") {
    // Newer files say prepend_scheme; older ones add_prefix_space (and always split).
    using Prepend = MetaspaceStep::Prepend;
    Prepend prepend = flag(component, "add_prefix_space", true) ? Prepend::kAlways : Prepend::kNever;
    const std::string scheme = component.value("prepend_scheme", "");
    if (scheme == "first") prepend = Prepend::kFirst;
    if (scheme == "never") prepend = Prepend::kNever;
    if (scheme == "always") prepend = Prepend::kAlways;
    steps.push_back(MetaspaceStep{component.at("replacement").get<std::string>(), prepend,
                                  flag(component, "split", true)});
  } else if (type == "Split") {
    const json& pattern = component.at("pattern");
    if (!pattern.contains("Regex")) {
      fail(source, ": pre_tokenizer Split with a String pattern is not supported");
    }
    const std::string regex = pattern.at("Regex").get<std::string>();
    const auto known = recognise_split_regex(regex);
    if (!known) fail(source, ": pre_tokenizer Split regex is not one we implement: ", regex);
    const std::string behavior = component.value("behavior", "Isolated");
    if (behavior != "Isolated" || flag(component, "invert", false)) {
      fail(source, ": pre_tokenizer Split supports behavior Isolated without invert, not ", behavior);
    }
    steps.push_back(RegexSplitStep{*known});
  } else {
    fail(source, ": pre_tokenizer type '", type, "' is not supported");
  }
}

// A Replace normalizer's or decoder's literal pattern ({"String": ...}; regexes are refused).
std::string replace_pattern(const json& component, const std::string& source) {
  const json& pattern = component.at("pattern");
  if (!pattern.contains("String")) fail(source, ": Replace with a Regex pattern is not supported");
  const std::string from = pattern.at("String").get<std::string>();
  if (from.empty()) fail(source, ": Replace with an empty pattern");
  return from;
}

void parse_normalizer(const json& component, const std::string& source,
                      std::vector<NormalizeStep>& steps) {
  const std::string type = type_of(component);
  if (type.empty()) return;
  if (type == "Sequence") {
    for (const json& child : component.at("normalizers")) parse_normalizer(child, source, steps);
  } else if (type == "Prepend") {
    steps.push_back(PrependStep{component.at("prepend").get<std::string>()});
  } else if (type == "Replace") {
    steps.push_back(ReplaceStep{replace_pattern(component, source),
                                component.at("content").get<std::string>()});
  } else {
    fail(source, ": normalizer type '", type, "' is not supported");
  }
}

// The decoders SentencePiece emulations use: Metaspace, or Sequence[Replace(marker, " "),
// ByteFallback, Fuse, Strip(" ", 1, 0)].
void parse_symbol_decoder(const json& component, const std::string& source, SymbolDecoding& decoding) {
  using LeadingSpace = SymbolDecoding::LeadingSpace;
  const std::string type = type_of(component);
  if (type == "Sequence") {
    bool fused = false;
    for (const json& child : component.at("decoders")) {
      const std::string child_type = type_of(child);
      if (child_type == "Fuse") {
        fused = true;
      } else if (child_type == "Strip") {
        if (!fused || child.value("content", "") != " " || child.value("start", 0) > 1 ||
            child.value("stop", 0) != 0) {
          fail(source, ": decoder Strip is supported only after Fuse, as Strip(\" \", 1, 0)");
        }
        if (child.value("start", 0) == 1) decoding.leading_space = LeadingSpace::kStripFromText;
      } else {
        parse_symbol_decoder(child, source, decoding);
      }
    }
  } else if (type == "Replace") {
    if (component.at("content").get<std::string>() != " ") {
      fail(source, ": decoder Replace must restore spaces (content \" \")");
    }
    decoding.space_marker = replace_pattern(component, source);
  } else if (type == "ByteFallback") {
    decoding.byte_fallback = true;
  } else if (type == "Metaspace") {
    decoding.space_marker = component.at("replacement").get<std::string>();
    const bool prepends = component.value("prepend_scheme", "always") != "never" &&
                          flag(component, "add_prefix_space", true);
    if (prepends) decoding.leading_space = LeadingSpace::kStripFromFirstToken;
  } else {
    fail(source, ": decoder '", type, "' is not supported");
  }
}

std::pair<std::string, std::string> parse_merge(const json& merge, size_t index,
                                                const std::string& source) {
  if (merge.is_array() && merge.size() == 2) return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos) {
      return {text.substr(0, space), text.substr(space + 1)};
    }
  }
  fail(source, ": model.merges[", index, "] is not a pair of symbols: ", merge.dump());
}

void parse_model(const json& model, const std::string& source, BpeTokenizerSpec& spec) {
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") fail(source, ": model type '", type, "' is not supported (only BPE)");
  if (!model.value("dropout", json()).is_null() && model.at("dropout").get<double>() != 0.0) {
    fail(source, ": model.dropout is not supported (tokenization would be random)");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json value = model.value(affix, json());
    if (!value.is_null() && !value.get<std::string>().empty()) {
      fail(source, ": model.", affix, " is not supported");
    }
  }
  for (const auto& [symbol, id] : model.at("vocab").items()) {
    spec.vocab.emplace_back(symbol, id.get<int32_t>());
  }
  const json& merges = model.at("merges");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) spec.merges.push_back(parse_merge(merges[i], i, source));
  spec.options.byte_fallback = flag(model, "byte_fallback", false);
  spec.options.ignore_merges = flag(model, "ignore_merges", false);
  spec.options.fuse_unk = flag(model, "fuse_unk", false);
  const json unk = model.value("unk_token", json());
  if (!unk.is_null()) {
    const std::string unk_token = unk.get<std::string>();
    const auto it = model.at("vocab").find(unk_token);
    if (it == model.at("vocab").end()) fail(source, ": model.unk_token '", unk_token, "' is not in the vocabulary");
    spec.options.unk_id = it->get<int32_t>();
  }
}

void parse_added_tokens(const json& added, const std::string& source, BpeTokenizerSpec& spec) {
  for (const json& token : added) {
    AddedToken t;
    t.content = token.at("content").get<std::string>();
    t.id = token.at("id").get<int32_t>();
    t.lstrip = flag(token, "lstrip", false);
    t.rstrip = flag(token, "rstrip", false);
    if (flag(token, "single_word", false)) {
      fail(source, ": added token '", t.content, "' has single_word=true, which is not supported");
    }
    spec.added_tokens.push_back(std::move(t));
  }
}

// The special token a TemplateProcessing post-processor puts in front of a single sequence
// (Llama-3 nests it in a Sequence after ByteLevel): the BOS token, or -1.
int32_t bos_from_post_processor(const json& post) {
  if (type_of(post) == "Sequence") {
    for (const json& child : post.at("processors")) {
      if (const int32_t id = bos_from_post_processor(child); id >= 0) return id;
    }
    return -1;
  }
  if (type_of(post) != "TemplateProcessing") return -1;
  const json& single = post.at("single");
  if (single.empty() || !single[0].contains("SpecialToken")) return -1;
  const std::string name = single[0]["SpecialToken"].at("id").get<std::string>();
  const json& ids = post.at("special_tokens").at(name).at("ids");
  return ids.size() == 1 ? ids[0].get<int32_t>() : -1;
}

int32_t id_of_content(const BpeTokenizerSpec& spec, std::string_view content) {
  for (const AddedToken& token : spec.added_tokens) {
    if (token.content == content) return token.id;
  }
  for (const auto& [symbol, id] : spec.vocab) {
    if (symbol == content) return id;
  }
  return -1;
}

// tokenizer_config.json writes a special token as a string or as {"content": ...}.
std::string special_token_content(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->value("content", "");
}

void resolve_special_tokens(const json& root, const std::filesystem::path& config_path,
                            BpeTokenizerSpec& spec) {
  if (!config_path.empty() && std::filesystem::exists(config_path)) {
    const json config = read_json(config_path);
    for (auto [key, target] : {std::pair{"bos_token", &spec.bos_id}, std::pair{"eos_token", &spec.eos_id}}) {
      const std::string content = special_token_content(config, key);
      if (content.empty()) continue;
      *target = id_of_content(spec, content);
      if (*target < 0) fail(config_path.string(), ": ", key, " '", content, "' is not a token");
    }
    const auto add_bos = config.find("add_bos_token");
    if (add_bos != config.end() && add_bos->is_boolean()) {
      spec.add_bos = add_bos->get<bool>();
    } else {
      spec.add_bos = bos_from_post_processor(root.value("post_processor", json())) >= 0;
    }
    return;
  }
  spec.bos_id = bos_from_post_processor(root.value("post_processor", json()));
  spec.add_bos = spec.bos_id >= 0;
  // Without a tokenizer_config.json, fall back on the names the common model families use.
  for (const char* name : {"<|begin_of_text|>", "<s>", "<|endoftext|>"}) {
    if (spec.bos_id < 0) spec.bos_id = id_of_content(spec, name);
  }
  for (const char* name : {"<|end_of_text|>", "</s>", "<|endoftext|>"}) {
    if (spec.eos_id < 0) spec.eos_id = id_of_content(spec, name);
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& path,
                                               const std::filesystem::path& config_path) {
  const std::string source = path.string();
  const json root = read_json(path);
  BpeTokenizerSpec spec;
  spec.source = source;
  try {
    parse_normalizer(root.value("normalizer", json()), source, spec.normalizer);
    parse_model(root.at("model"), source, spec);
    parse_added_tokens(root.value("added_tokens", json::array()), source, spec);
    parse_pre_tokenizer(root.value("pre_tokenizer", json()), source, spec.pre_tokenizer);
    spec.options.byte_level = !spec.pre_tokenizer.empty() &&
                              std::holds_alternative<ByteLevelStep>(spec.pre_tokenizer.back());
    const json& decoder = root.value("decoder", json());
    if (spec.options.byte_level) {
      if (type_of(decoder) != "ByteLevel") {
        fail(source, ": decoder '", type_of(decoder), "' does not undo the ByteLevel pre-tokenizer");
      }
      if (!spec.normalizer.empty()) fail(source, ": a normalizer before ByteLevel is not supported");
    } else {
      parse_symbol_decoder(decoder, source, spec.decoding);
    }
    resolve_special_tokens(root, config_path, spec);
  } catch (const json::exception& e) {
    fail(source, ": unexpected tokenizer.json structure: ", e.what());
  }
  return make_bpe_tokenizer(spec);
}

}  // namespace fireq::tokenizer_detail
