#!/usr/bin/env python3
"""Reference token ids for the tokenizer tests, from the `tokenizers` and `sentencepiece` packages.

    .venv/bin/python scripts/tokenizer_reference.py OUT_DIR [--only NAME] [--wiki-chars N]

Builds three tokenizers (or the one named) in OUT_DIR and writes OUT_DIR/cases.json with the ids
each assigns to a varied corpus (the C++ tests encode the same strings and must get the same ids):
  smollm2/      tokenizer.json rebuilt from SmolLM2's GGUF metadata (vocabulary, merges, control
                tokens, bos/eos) with the `tokenizers` library. It equals the Hugging Face
                SmolLM2 tokenizer.json only as far as its pre-tokenizer/normalizer configuration
                is reproduced here: Sequence[Digits(individual_digits), ByteLevel(no prefix space)],
                no normalizer, ByteLevel decoder.
  llama3_style/ a Llama-3-style tokenizer.json (Split with the Llama-3 regex + ByteLevel,
                ignore_merges, special tokens after the vocabulary) trained with BpeTrainer on
                data/text/lee_background.cor.
  spm/          a SentencePiece BPE model with byte fallback, Llama-2 settings (identity
                normalization, dummy prefix, digits split), trained on the same text; reference
                ids from the `sentencepiece` package. Its pieces are also written as the
                tokenizer metadata of a GGUF file (tokenizer.gguf), as llama.cpp stores Llama-2's.
                Also converted to two tokenizer.json files as Hugging Face converts Llama-2's
                (legacy Prepend/Replace normalizers; newer Metaspace pre-tokenizer), whose
                reference ids come from `tokenizers`.
The C++ test loads every path listed under "loads" (relative to OUT_DIR, or absolute: the real
SmolLM2 GGUF) and compares it with the reference ids that load names.
"""
import argparse
import bz2
import json
import os
import struct
import sys
import time

import sentencepiece as spm
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors,
                        trainers)
from tokenizers.processors import TemplateProcessing

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
GGUF_PATH = os.path.join(ROOT, "data", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
LEE_PATH = os.path.join(ROOT, "data", "text", "lee_background.cor")
WIKI_PATH = os.path.join(ROOT, "data", "text", "enwiki-shortened.xml.bz2")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]

# The hand-written part of the corpus: each entry probes something a tokenizer can get wrong.
CORPUS = [
    ("empty", ""),
    ("prose", "The quick brown fox jumps over the lazy dog. It was the best of times, it was the "
              "worst of times; Dr. Smith's report (2nd ed.) said so!"),
    ("contractions", "I'm sure you're right, they've gone, we'll see, he'd know, it's fine, "
                     "DON'T, You'Re, I'LL, she'D, 'twas, rock'n'roll, o'clock"),
    ("contractions_edge", "'s 'S 'ſ x'ſt 'st 'll'll ''s x's'd '' ' s’s don’t 'Re 'rE 'LL"),
    ("ascii_controls", "a\x1cb\x1d c\x00d\x7f e\x0bf\x0cg\x85h"),
    ("numbers", "12345678901234567890 3.14159 1,000,000 -42 +7e-10 0x1F 2024-11-25 v1.2.3 "
                "007 1 22 333 4444 55555"),
    ("unicode_digits", "١٢٣٤٥ ²³ ½ Ⅻ ١٢٣٤ １２３４ ৪২ ߁߂ 𝟘𝟙𝟚"),
    ("code_python", "def f(x):\n    return [i ** 2 for i in range(x) if i % 3 == 0]\n\n"
                    "class A(object):\n\tpass  # comment\n"),
    ("code_cpp", "int main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n"
                 "  for (auto& x : v) x <<= 2;\n  return v.size() != 3 ? -1 : 0;\n}\n"),
    ("cjk", "日本語のテキストです。中文文本，简体字。한국어 텍스트입니다."),
    ("arabic_rtl", "مرحبا بالعالم! هذا نص عربي. שלום עולם"),
    ("devanagari", "नमस्ते दुनिया, यह हिन्दी पाठ है। क्षत्रिय"),
    ("combining", "e\u0301 a\u0308 Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d\u0308\u0307l"
                  " n\u0303o\u0300 \u0301alone"),
    ("emoji", "I 👍🏽 it 😀😃 👨‍👩‍👧‍👦 family 🏳️‍🌈 🇫🇷🇩🇪 ❤️ 🤷🏻‍♂️ ✌🏿"),
    ("whitespace_runs", "a  b   c    d\t\te \t f"),
    ("crlf", "line one\r\nline two\r\n\r\nline four\r\n"),
    ("newlines", "\n\n\nx\n\n\n"),
    ("leading_trailing", "   leading and trailing   "),
    ("lone_cr", "lone\rcarriage\r return\r"),
    ("only_spaces", "     "),
    ("only_newline", "\n"),
    ("unicode_spaces", "a\u00a0b\u2009c\u3000d\u2028e\u0085f \u200bg"),
    ("space_newline_mix", "  \n  \n\t\n \r\n x \n"),
    ("punctuation", "Hello!!! What?!... (a) [b] {c} <d> \"e\" 'f' --g-- __h__ ***i*** ~~~"),
    ("mixed_scripts", "naïve café résumé Ærøskøbing Straße ΑΒΓ αβγ Привет мир"),
    ("urls", "https://example.com/path?q=1&r=2#frag user@example.org C:\\Windows\\path"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious"),
    ("repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa " + "ab" * 40 + " " + "=" * 60),
]

SPECIAL_TEXT = {
    "smollm2": [
        ("chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
                 "What is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
        ("special_glued", "x<|endoftext|>y <|im_end|><|im_start|> <|im_start"),
    ],
    "llama3_style": [
        ("chat", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!"
                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("special_glued", "a<|eot_id|>b <|end_of_text|> <|eot_id"),
        ("strip_tokens", "a  <|lstrip|> b x<|rstrip|>  y a\t\n<|lstrip|>b <|strip|> c "
                         "a<|strip|><|strip|>  <|lstrip|>c \u3000<|lstrip|>x<|rstrip|>\u3000y"),
        ("strip_at_ends", "  <|lstrip|>"),
    ],
    "spm": [
        ("user_defined", "<|im_start|>user\nHello<|im_end|> x"),
    ],
}


# Random strings: short runs drawn from the character classes the pre-tokenizer regexes
# distinguish, so that their boundaries meet in every combination.
RANDOM_ALPHABET = [
    "abcxyzABCXYZ", "0123456789", " ", "  \t", "\n", "\r\n", "\r", "'", "'sStTmMdDlLrReEvV",
    ".,;:!?-_()[]{}<>\"#$%&*+/=@\\^`|~", "éüßÆøñ", "日本語中文한국", "٠١٢٣٤٥", "²³½Ⅻ",
    "\u00a0\u2009\u3000\u0085\u2028", "\u0301\u0308\u200d", "😀👍🏽👨‍👩‍👧🇫🇷", "ſ",
    "मनस्ते", "مرحبا",
]


def random_strings(count, seed):
    import random
    rng = random.Random(seed)
    strings = []
    for i in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            chars = rng.choice(RANDOM_ALPHABET)
            parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 4))))
        strings.append((f"random_{seed}_{i}", "".join(parts)))
    return strings


# ---- GGUF metadata (the header only; tensors are not read) -------------------------------------
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path):
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def read_string():
            return f.read(read("<Q")).decode("utf-8")

        def read_value(kind):
            if kind == 8:
                return read_string()
            if kind == 9:
                element, count = read("<I"), read("<Q")
                return [read_value(element) for _ in range(count)]
            return read(GGUF_SCALARS[kind])

        if f.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        read("<I")  # version
        read("<Q")  # tensor count
        return {read_string(): read_value(read("<I")) for _ in range(read("<Q"))}


def build_smollm2(out_dir):
    meta = read_gguf_metadata(GGUF_PATH)
    if meta["tokenizer.ggml.model"] != "gpt2" or meta["tokenizer.ggml.pre"] != "smollm":
        sys.exit("unexpected SmolLM2 tokenizer metadata")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
              "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]]}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return tok


def build_llama3_style(out_dir):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([LEE_PATH], trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL])
    # Added tokens that swallow the whitespace around them, as some chat/FIM tokens do.
    tok.add_special_tokens([AddedToken("<|lstrip|>", lstrip=True, normalized=False),
                            AddedToken("<|rstrip|>", rstrip=True, normalized=False),
                            AddedToken("<|strip|>", lstrip=True, rstrip=True, normalized=False)])
    bos = tok.token_to_id(LLAMA3_SPECIAL[0])
    tok.post_processor = processors.Sequence([  # as Llama-3's tokenizer.json has it
        processors.ByteLevel(trim_offsets=False),
        TemplateProcessing(single=f"{LLAMA3_SPECIAL[0]} $A",
                           special_tokens=[(LLAMA3_SPECIAL[0], bos)])])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok


def read_sentencepiece_pieces(model_path):
    """(piece, score, type) of each entry of a .model file (protobuf ModelProto field 1)."""
    def varint(data, pos):
        value, shift = 0, 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    def fields(data):
        pos = 0
        while pos < len(data):
            key, pos = varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = varint(data, pos)
            elif wire == 5:
                value, pos = struct.unpack_from("<f", data, pos)[0], pos + 4
            elif wire == 2:
                length, pos = varint(data, pos)
                value, pos = data[pos:pos + length], pos + length
            else:
                sys.exit(f"{model_path}: unexpected protobuf wire type {wire}")
            yield number, value

    with open(model_path, "rb") as f:
        model = f.read()
    pieces = []
    for number, value in fields(model):
        if number == 1:
            piece = dict(fields(value))
            pieces.append((piece[1].decode("utf-8"), piece.get(2, 0.0), piece.get(3, 1)))
    return pieces


def write_gguf_metadata(path, metadata):
    """A GGUF v3 file with metadata only (no tensors), as llama.cpp writes a tokenizer."""
    def string(s):
        data = s.encode("utf-8")
        return struct.pack("<Q", len(data)) + data

    def value(v):
        if isinstance(v, bool):
            return struct.pack("<I?", 7, v)
        if isinstance(v, int):
            return struct.pack("<Ii", 5, v)
        if isinstance(v, str):
            return struct.pack("<I", 8) + string(v)
        kinds = {str: (8, string), float: (6, lambda x: struct.pack("<f", x)),
                 int: (5, lambda x: struct.pack("<i", x))}
        kind, encode = kinds[type(v[0])]
        return struct.pack("<IIQ", 9, kind, len(v)) + b"".join(encode(x) for x in v)

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    out += b"".join(string(k) + value(v) for k, v in metadata.items())
    out += b"\0" * (-len(out) % 32)  # the (empty) data section starts aligned
    with open(path + ".tmp", "wb") as f:
        f.write(out)
    os.replace(path + ".tmp", path)


def build_spm(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=LEE_PATH, model_prefix=os.path.join(out_dir, "tokenizer"), vocab_size=1000,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2)
    model_path = os.path.join(out_dir, "tokenizer.model")
    processor = spm.SentencePieceProcessor(model_file=model_path)
    pieces = read_sentencepiece_pieces(model_path)
    write_gguf_metadata(os.path.join(out_dir, "tokenizer.gguf"), {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p for p, _, _ in pieces],
        "tokenizer.ggml.scores": [s for _, s, _ in pieces],
        "tokenizer.ggml.token_type": [t for _, _, t in pieces],
        "tokenizer.ggml.bos_token_id": processor.bos_id(),
        "tokenizer.ggml.eos_token_id": processor.eos_id(),
        "tokenizer.ggml.unknown_token_id": processor.unk_id(),
        "tokenizer.ggml.add_space_prefix": True,
    })
    return processor


def spm_as_tokenizers(model_path):
    """The SentencePiece BPE model as a `tokenizers` BPE, converted the way Hugging Face
    converts Llama-2's: merges are the vocabulary's splittable pieces ordered by score, text is
    prefixed with U+2581 and spaces replaced by it, byte fallback for the rest."""
    from tokenizers import normalizers
    pieces = read_sentencepiece_pieces(model_path)
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    candidates = []
    for i, (piece, score, kind) in enumerate(pieces):
        if kind != 1:  # only normal pieces are the result of merges
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-score, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(candidates)]
    unk = next(piece for piece, _, kind in pieces if kind == 2)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_tokens([AddedToken(piece, special=kind == 3, normalized=False)
                    for piece, _, kind in pieces if kind in (3, 4)])
    return tok


def corpus_files(wiki_chars):
    with open(LEE_PATH, encoding="utf-8") as f:
        lee = f.read()
    with bz2.open(WIKI_PATH, "rt", encoding="utf-8") as f:
        wiki = f.read(wiki_chars)
    return [("lee_background.cor", lee), (f"enwiki[:{len(wiki)}]", wiki)]


class SentencePieceReference:
    """sentencepiece's processor with the interface of a `tokenizers` Tokenizer."""

    def __init__(self, processor):
        self.processor = processor

    def encode_ids(self, text):
        return self.processor.encode(text)

    def decode(self, ids):
        return self.processor.decode(ids)


class TokenizersReference:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_ids(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def save_tokenizer(tok, path):
    tok.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    return tok


def spm_loads(out_dir, processor):
    """The .model and its GGUF against sentencepiece; two tokenizer.json conversions (legacy
    Prepend/Replace normalizers, and the newer Metaspace pre-tokenizer) against tokenizers."""
    from tokenizers import normalizers
    model_path = os.path.join(out_dir, "tokenizer.model")
    legacy = spm_as_tokenizers(model_path)
    metaspace = spm_as_tokenizers(model_path)
    metaspace.normalizer = normalizers.Sequence([])
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                       split=False)
    metaspace.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)])
    for tok in (legacy, metaspace):
        tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    save_tokenizer(legacy, os.path.join(out_dir, "tokenizer_hf_legacy.json"))
    save_tokenizer(metaspace, os.path.join(out_dir, "tokenizer_hf_metaspace.json"))
    special = {"bos_id": processor.bos_id(), "eos_id": processor.eos_id(), "add_bos": True}
    sp = SentencePieceReference(processor)
    return [
        dict(path="spm/tokenizer.model", ids="ids", reference=sp, **special),
        dict(path="spm/tokenizer.gguf", ids="ids", reference=sp, **special),
        dict(path="spm/tokenizer_hf_legacy.json", ids="ids_hf_legacy",
             reference=TokenizersReference(legacy), **special),
        dict(path="spm/tokenizer_hf_metaspace.json", ids="ids_hf_metaspace",
             reference=TokenizersReference(metaspace), **special),
    ]


def loads_for(name, out_dir):
    """[{path, ids (the reference's key in each case), reference, bos_id, eos_id, add_bos}]"""
    if name == "smollm2":
        tok = build_smollm2(out_dir)
        meta = read_gguf_metadata(GGUF_PATH)
        special = {"bos_id": meta["tokenizer.ggml.bos_token_id"],
                   "eos_id": meta["tokenizer.ggml.eos_token_id"],
                   "add_bos": meta["tokenizer.ggml.add_bos_token"]}
        ref = TokenizersReference(tok)
        return [dict(path="smollm2", ids="ids", reference=ref, **special),
                dict(path=GGUF_PATH, ids="ids", reference=ref, **special)]
    if name == "llama3_style":
        tok = build_llama3_style(out_dir)
        bos_ids = tok.encode("Hi", add_special_tokens=True).ids
        special = {"bos_id": tok.token_to_id(LLAMA3_SPECIAL[0]),
                   "eos_id": tok.token_to_id(LLAMA3_SPECIAL[1]),
                   "add_bos": bos_ids[0] == tok.token_to_id(LLAMA3_SPECIAL[0]),
                   "bos_ids": bos_ids}
        # The same vocabulary split by Qwen2's regex (digits one by one instead of up to three).
        qwen2 = json.loads(tok.to_str())
        qwen2["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_REGEX
        qwen2_path = os.path.join(out_dir, "qwen2_regex.json")
        with open(qwen2_path, "w", encoding="utf-8") as f:
            json.dump(qwen2, f, ensure_ascii=False)
        qwen2_tok = Tokenizer.from_file(qwen2_path)
        return [dict(path="llama3_style", ids="ids", reference=TokenizersReference(tok), **special),
                dict(path="llama3_style/qwen2_regex.json", ids="ids_qwen2",
                     reference=TokenizersReference(qwen2_tok), **special)]
    return spm_loads(out_dir, build_spm(out_dir))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--only", choices=["smollm2", "llama3_style", "spm"])
    parser.add_argument("--wiki-chars", type=int, default=1_000_000,
                        help="characters of the Wikipedia dump to compare (default 1M, -1: all)")
    parser.add_argument("--random-strings", type=int, default=300,
                        help="random strings mixing character classes to compare (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strings")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.time()
    texts = CORPUS + corpus_files(args.wiki_chars) + random_strings(args.random_strings, args.seed)
    result = {"tokenizers": []}
    for name in ["smollm2", "llama3_style", "spm"]:
        if args.only and name != args.only:
            continue
        loads = loads_for(name, os.path.join(args.out_dir, name))
        references = {load["ids"]: load["reference"] for load in loads}
        cases = []
        for label, text in texts + SPECIAL_TEXT[name]:
            case = {"label": label, "text": text}
            for key, reference in references.items():
                ids = reference.encode_ids(text)
                case[key] = ids
                decoded = reference.decode(ids)
                if decoded != text:  # e.g. bytes the vocabulary lacks are dropped
                    case[key + "_decoded"] = decoded
            cases.append(case)
        for load in loads:
            load["reference"] = type(load["reference"]).__name__.replace("Reference", "").lower()
        result["tokenizers"].append({"name": name, "loads": loads, "cases": cases})
    tmp = os.path.join(args.out_dir, "cases.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    os.replace(tmp, os.path.join(args.out_dir, "cases.json"))
    print(f"tokenizer_reference: {sum(len(t['cases']) for t in result['tokenizers'])} cases in "
          f"{time.time() - start:.1f} s -> {args.out_dir}")


if __name__ == "__main__":
    main()
