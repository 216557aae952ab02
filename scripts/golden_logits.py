#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers for the CPU reference engine's test.

Loads a GGUF Llama model with transformers (its own GGUF dequantizer and q/k un-permutation, an
implementation independent of ours), runs a few fixed prompts in float32 and writes a small JSON
file: the prompts' token ids and, for selected positions, the logsumexp of the logits, the top
logits and the logits of a fixed spread of token ids, plus a greedy continuation. With --ppl-text
it also stores transformers' perplexity of that text by fireq ppl's procedure, per window.

Needs torch, transformers and gguf, which are too big for CI: run it in a separate venv, e.g.
    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch transformers gguf numpy accelerate
    /tmp/torchenv/bin/python scripts/golden_logits.py \
        --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/engine/golden/smollm2_135m.json --ppl-text data/text/wiki.eval.txt
The exact command, library versions and the model file's SHA-256 are stored in the output.
"""
import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile

import gguf
import numpy as np
import torch
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

# Our own text (no third-party content), long enough to reach a few hundred positions.
LONG_TEXT = (
    "The river town grew up around a stone bridge that merchants crossed on their way to the "
    "coast. In the early years its market traded wool, salt and timber, and the town council met "
    "in a single room above the customs house. When the railway arrived in 1871, the old bridge "
    "lost most of its traffic, but the station brought engineers, clerks and a printing works that "
    "published the first local newspaper. By the turn of the century the population had doubled. "
    "Schools were built on the northern hill, a hospital opened beside the park, and the council "
    "moved into a new hall with a clock tower. During the war the printing works made maps for the "
    "army; afterwards it returned to newspapers and school books. Today the town is known for its "
    "autumn music festival, its museum of printing, and the walking path that follows the river "
    "for twelve kilometres, past mills, orchards and the ruins of a medieval chapel. Visitors often "
    "ask why the bridge has five arches when the river needs only three: the answer is that the "
    "river was wider in the fourteenth century, before its banks were raised to protect the "
    "market square from floods."
)

PROMPTS = [
    {"name": "capital", "text": "The capital of France is", "chat": False},
    {"name": "chat", "text": "What is the boiling point of water in Celsius?", "chat": True},
    {"name": "unicode", "text": "Größe, naïve café — 東京は日本の首都です。 Emoji: 🚀✨", "chat": False},
    {"name": "long", "text": LONG_TEXT, "chat": False},
]
TOP = 16            # top logits stored per position
SPREAD_STRIDE = 384  # plus the logits of ids 0, 384, 768, ... (128 ids for a 49152 vocabulary)
LONG_POSITION_STRIDE = 16
GREEDY_TOKENS = 8


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def match_gguf_pre_tokenizer(tokenizer, model_path):
    """transformers gives every GGUF "gpt2" tokenizer a plain ByteLevel pre-tokenizer. SmolLM2's
    ("smollm" in tokenizer.ggml.pre) first splits digits one by one, as its tokenizer.json does and
    as fireq's tokenizer does; without that, "\n\n19" tokenizes differently. Returns the name."""
    field = gguf.GGUFReader(model_path).fields.get("tokenizer.ggml.pre")
    name = bytes(field.parts[field.data[0]]).decode() if field else ""
    if name == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return name


def selected_positions(n, name):
    if name != "long":
        return list(range(n))
    return sorted(set(range(0, n, LONG_POSITION_STRIDE)) | {n - 1})


def perplexity(model, tokenizer, path, seq_len, max_windows):
    """Non-overlapping windows, no BOS, mean NLL over seq_len - 1 predictions per window."""
    with open(path, "rb") as f:
        raw = f.read()
    ids = tokenizer(raw.decode("utf-8"), add_special_tokens=False)["input_ids"]
    windows = min(len(ids) // seq_len, max_windows)
    window_nll = []
    for w in range(windows):
        window = torch.tensor([ids[w * seq_len:(w + 1) * seq_len]])
        with torch.no_grad():
            logits = model(window).logits[0].double()
        nll = torch.nn.functional.cross_entropy(logits[:-1], window[0, 1:], reduction="sum")
        window_nll.append(float(nll) / (seq_len - 1))
        print(f"  ppl window {w + 1}/{windows}: nll {window_nll[-1]:.5f}, running ppl "
              f"{np.exp(np.mean(window_nll)):.4f}", file=sys.stderr)
    mean_nll = float(np.mean(window_nll))
    return {"text": os.path.relpath(path), "text_sha256": hashlib.sha256(raw).hexdigest(),
            "tokens": len(ids), "seq_len": seq_len, "windows": windows, "window_mean_nll": window_nll,
            "mean_nll": mean_nll, "perplexity": float(np.exp(mean_nll))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--out", required=True, help="output JSON")
    parser.add_argument("--ppl-text", help="also compute transformers' perplexity of this text "
                        "(fireq ppl's procedure, docs/EVALUATION.md) and store it")
    parser.add_argument("--ppl-seq-len", type=int, default=2048)
    parser.add_argument("--ppl-windows", type=int, default=16)
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    folder, name = os.path.split(os.path.abspath(args.model))
    print(f"loading {args.model} with transformers {transformers.__version__}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    pre_tokenizer = match_gguf_pre_tokenizer(tokenizer, args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    spread_ids = list(range(0, vocab, SPREAD_STRIDE))

    records = []
    for prompt in PROMPTS:
        if prompt["chat"]:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt["text"]}], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt["text"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double().numpy()
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        positions = []
        for p in selected_positions(len(ids), prompt["name"]):
            row = logits[p]
            top = np.argsort(-row, kind="stable")[:TOP]
            lse = float(np.log(np.exp(row - row.max()).sum()) + row.max())
            positions.append({
                "position": p,
                "logsumexp": lse,
                "top_ids": [int(i) for i in top],
                "top_logits": [float(row[i]) for i in top],
                "spread_logits": [float(row[i]) for i in spread_ids],
            })
        records.append({
            "name": prompt["name"],
            "text": text,
            "token_ids": [int(i) for i in ids],
            "positions": positions,
            "greedy_ids": [int(i) for i in greedy[0, len(ids):]],
            "greedy_text": tokenizer.decode(greedy[0, len(ids):]),
        })
        print(f"  {prompt['name']}: {len(ids)} tokens, greedy {records[-1]['greedy_text']!r}",
              file=sys.stderr)

    golden = {
        "command": "python3 " + " ".join(shlex.quote(a) for a in sys.argv),
        "model_file": name,
        "model_sha256": sha256(args.model),
        "model_bytes": os.path.getsize(args.model),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "dtype": "float32",
        "gguf_pre_tokenizer": pre_tokenizer,
        "vocab_size": vocab,
        "spread_ids": spread_ids,
        "prompts": records,
    }
    if args.ppl_text:
        golden["perplexity"] = perplexity(model, tokenizer, args.ppl_text, args.ppl_seq_len,
                                          args.ppl_windows)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".tmp") as f:
        json.dump(golden, f, ensure_ascii=False)
        f.write("\n")
    os.chmod(f.name, 0o644)
    os.replace(f.name, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
