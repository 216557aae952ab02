"""Merges `fireq bench` rows with the Hugging Face peers measured in the same device run into
bench/results/e2e-<device>-<date>.json (schema: ../shared/BENCH_RESULTS.md) and a markdown table.

usage: merge_results.py OURS.json[,MORE.json] PEERS.json COMMIT COMMAND OUT_PREFIX [NOTE]
(several `fireq bench` outputs, e.g. two shapes, are concatenated; NOTE goes under the table title)
"""
import datetime
import json
import sys

ours_paths, peers_path, commit, command, out_prefix = sys.argv[1:6]
note = sys.argv[6] if len(sys.argv) > 6 else ""
ours = {"rows": []}
for path in ours_paths.split(","):
    part = json.load(open(path))
    ours["device"] = part["device"]
    ours["rows"] += part["rows"]
try:
    peers = json.load(open(peers_path))
    peer_rows, peer_error = peers.get("rows", {}), "; ".join(peers.get("errors", [])) or None
except (OSError, ValueError) as e:
    peers, peer_rows, peer_error = {}, {}, f"peers did not run: {e}"


def peer(key, to_us):
    value = peer_rows.get(key)
    return None if value is None else to_us(value)


rows = []
for row in ours["rows"]:
    case = row["case"]
    eager = compiled = None
    if row["shape"] != "llama3-8b":  # the peer script runs Llama-3-8B only
        pass
    elif case == "ttft" and row["batch"] == 1:
        eager = peer(f"ttft_ms_bs1_S{row['prompt']}", lambda ms: ms * 1e3)
    elif case == "prefill" and row["batch"] == 16 and row["prompt"] == 1024:
        eager = peer("prefill_tok_s_bs16_S1024", lambda tok_s: 16 * 1024 / tok_s * 1e6)
    elif case == "decode":
        b = row["batch"]
        eager = peer(f"decode_tok_s_eager_bs{b}", lambda tok_s: b / tok_s * 1e6)
        compiled = peer(f"decode_tok_s_compiled_bs{b}", lambda tok_s: b / tok_s * 1e6)
    if case != "peak_memory":
        row["peers_us"] = {"hf_transformers_bf16_sdpa_eager": eager, "hf_transformers_bf16_static_compiled": compiled}
        missing = [k for k, v in row["peers_us"].items() if v is None]
        if missing:
            row["peers_error"] = (peer_error or "") + (
                " the peer script does not measure this case" if not peer_error else "")
    rows.append(row)

device = ours["device"]
date = datetime.date.today().isoformat()
result = {"area": "e2e", "device": device, "date": date, "commit": commit, "command": command, "note": note, "rows": rows,
          "peers_meta": {k: peers.get(k) for k in ("torch", "transformers", "device")}}
json.dump(result, open(out_prefix + ".json", "w"), indent=1)


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


lines = [f"# End-to-end, {device}, {date} (commit {commit[:10]})", "",
         f"`{command}`", ""] + ([note, ""] if note else []) + [
         "Ours = the CUDA engine: `ours:fireq` its FireQ path (INT4 W4A8 GEMMs, FP8 activations and queries, "
         "paged INT4 KV, CUDA graphs for decode), `ours:bf16` its BF16 path (cuBLASLt BF16 linears, paged BF16 KV, "
         "FP32 CUDA-core attention); random weights of the shapes drawn on the GPU in each path's format. "
         "Peers = Hugging Face transformers BF16, Llama-3-8B only (bench/e2e/torch_e2e_peers.py). Decode rows: "
         "fraction of the roofline of the path's own bytes (weights + KV per step at 3.0 TB/s), and the step "
         "without CUDA graphs.", "",
         "| case | shape | variant | batch | tokens | ours | HF eager (SDPA) | HF static + compile | ours vs best HF |",
         "|---|---|---|---|---|---|---|---|---|"]
for row in rows:
    case = row["case"]
    if case == "peak_memory":
        lines.append(f"| peak GPU memory | {row['shape']} | {row['variant']} | | | {row['gib']:.2f} GiB | | | |")
        continue
    p = row.get("peers_us", {})
    eager, compiled = p.get("hf_transformers_bf16_sdpa_eager"), p.get("hf_transformers_bf16_static_compiled")
    best = min([x for x in (eager, compiled) if x is not None], default=None)
    speedup = None if best is None else best / row["us"]
    if case == "ttft":
        ours_text, peer_text = f"{row['ms']:.1f} ms", [fmt(x and x / 1e3) + " ms" if x else "—" for x in (eager, compiled)]
        tokens = row["prompt"]
    elif case == "prefill":
        ours_text = f"{row['tok_s']:,.0f} tok/s"
        peer_text = [fmt(x and row['batch'] * row['prompt'] / x * 1e6, 0) + " tok/s" if x else "—" for x in (eager, compiled)]
        tokens = f"{row['batch']}×{row['prompt']}"
    else:
        roofline = "INT4" if row["variant"] == "ours:fireq" else "BF16"
        graphs = (f"; {row['batch'] / row['us_without_graphs'] * 1e6:,.1f} without graphs"
                  if row.get("cuda_graphs") and "us_without_graphs" in row else "")
        ours_text = f"{row['tok_s']:,.1f} tok/s ({100 * row['roofline_fraction']:.0f}% of {roofline} roofline{graphs})"
        peer_text = [fmt(x and row['batch'] / x * 1e6) + " tok/s" if x else "—" for x in (eager, compiled)]
        tokens = f"ctx {row['context']}"
    lines.append(f"| {case} | {row['shape']} | {row['variant']} | {row['batch']} | {tokens} | {ours_text} | {peer_text[0]} | "
                 f"{peer_text[1]} | {fmt(speedup, 2)}× |")
for row in rows:
    if "profile" in row:
        total = sum(p["ms"] for p in row["profile"])
        what = f"prompt {row['prompt']}" if "prompt" in row else f"context {row['context']}"
        lines += ["", f"Profile of one {row['case']} step, {row['variant']}, {row['shape']}, batch {row['batch']}, {what} "
                  f"({total:.3f} ms GPU time, CUDA events between ops):", "",
                  "| op | ms | share |", "|---|---|---|"]
        lines += [f"| {p['op']} | {p['ms']:.3f} | {100 * p['share']:.1f}% |" for p in row["profile"]]
open(out_prefix + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
