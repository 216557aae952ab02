"""Joins bench_attention --prefill-suite's JSON with the prefill peers' (bench/peers/torch_fbgemm_peers.py with
PARTS=prefill, same device call) into bench/results/attention-prefill-<device>-<date>[-<tag>].json
(schema: ../shared/BENCH_RESULTS.md) and a markdown table beside it.

usage: merge_prefill_results.py OURS.json PEERS.json OUT_DIR --commit SHA --command CMD [--date YYYY-MM-DD] [--tag TAG]
"""
import argparse
import datetime
import json
import os
import re

PEERS = ("cudnn_fp8", "sdpa_cudnn_bf16", "sdpa_flash_bf16")
HQ, D = 32, 128
VARIANTS = (("ours:prefill_fa3_wgmma_fp8_int4_three_stage", "FP8 wgmma, three-stage"),
            ("ours:prefill_fa3_wgmma_fp8_int4_serial", "FP8 wgmma, serial"),
            ("ours:prefill_fa2_mma_f16_int4", "FA2 mma.sync FP16"))


def prefill_flops(b, s):
    return 2 * 2 * b * HQ * s * s * D / 2  # causal: QK^T and PV over half the square


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("peers")
    ap.add_argument("out_dir")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    ours = json.load(open(a.ours))
    peers = json.load(open(a.peers))
    by_shape = {(r["B"], r["S"]): r for r in peers.get("prefill", [])}
    rows = []
    for r in ours["rows"]:
        row = {"case": "prefill_causal_l3_8b_32q8kv_d128_page64", "B": r["B"], "S": r["S"], "variant": r["variant"],
               "us": r["us"], "tflops": r["tflops"]}
        p = by_shape.get((r["B"], r["S"]))
        if p:
            row["peers_us"] = {k: p["us"].get(k) for k in PEERS}
            row["peers_tflops"] = {k: (prefill_flops(r["B"], r["S"]) / v / 1e6 if v else None)
                                   for k, v in row["peers_us"].items()}
        else:
            row["peers_us"] = {k: None for k in PEERS}
            row["peers_error"] = "peer row missing"
        errs = [e for e in peers.get("errors", []) if e.startswith(f"prefill B={r['B']} S={r['S']} ")]
        if errs:
            row["peers_error"] = errs
        rows.append(row)
    device = ours["device"]
    short = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    short = "h100" if "h100" in short else ("h200" if "h200" in short else short)
    base = os.path.join(a.out_dir, f"attention-prefill-{short}-{a.date}" + (f"-{a.tag}" if a.tag else ""))
    result = {"area": "attention", "device": device, "date": a.date, "commit": a.commit, "command": a.command,
              "peers_torch": peers.get("torch"), "rows": rows}
    write_atomically(base + ".json", json.dumps(result, indent=1) + "\n")

    def fmt(x, spec=".0f"):
        return "—" if x is None else format(x, spec)

    names = [name for _, name in VARIANTS]
    lines = [f"# Causal prefill on {device}, {a.date} (commit {a.commit[:10]})", "",
             "Llama-3-8B heads (32 q / 8 kv, d = 128), S new tokens per sequence, no prefix, paged INT4 K/V (page 64). "
             "TFLOP/s = 2·2·B·H·S²·D/2 / time. Peers (FP8 or BF16 Q/K/V, contiguous) in the same device call.", "",
             "| B | S | " + " | ".join(f"ours {n}" for n in names) +
             " | cuDNN FP8 | cuDNN BF16 | FA2 BF16 | best ours / cuDNN FP8 |",
             "|---|---|" + "---|" * (len(names) + 4)]
    shapes = sorted({(r["B"], r["S"]) for r in rows})
    for b, s in shapes:
        mine = {r["variant"]: r for r in rows if (r["B"], r["S"]) == (b, s)}
        t = next(iter(mine.values()))["peers_tflops"] if mine else {}
        ours_t = [mine[v]["tflops"] if v in mine else None for v, _ in VARIANTS]
        best = max((x for x in ours_t if x is not None), default=None)
        fp8 = t.get("cudnn_fp8") if t else None
        lines.append(f"| {b} | {s} | " + " | ".join(fmt(x) for x in ours_t) +
                     f" | {fmt(fp8)} | {fmt(t.get('sdpa_cudnn_bf16') if t else None)} | "
                     f"{fmt(t.get('sdpa_flash_bf16') if t else None)} | {fmt(best / fp8 if best and fp8 else None, '.2f')} |")
    write_atomically(base + ".md", "\n".join(lines) + "\n")
    print(base + ".json", base + ".md")


if __name__ == "__main__":
    main()
