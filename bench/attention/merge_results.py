"""Joins bench_attention's JSON with the peers' (bench/peers/torch_fbgemm_peers.py, same device call) into
bench/results/attention-<device>-<date>[-<suffix>].json (schema: ../shared/BENCH_RESULTS.md) and a markdown
table beside it. Every row of ours gets the peers of its shape (`peers_us`) and our speed-up over each
(`speedup_vs_peers`: peer µs / our µs, > 1 where we are faster).

usage: merge_results.py OURS.json PEERS.json OUT_DIR --commit SHA --command CMD [--date YYYY-MM-DD] [--suffix v3]
                        [--note TEXT ...]
"""
import argparse
import datetime
import json
import os
import re

DECODE_PEERS = ("fbgemm_int4", "fbgemm_fp8", "fbgemm_bf16", "sdpa_cudnn_bf16", "sdpa_flash_bf16")
PREFILL_PEERS = ("cudnn_fp8", "sdpa_cudnn_bf16", "sdpa_flash_bf16")
PREFILL_VARIANTS = (("ours:prefill_fa3_wgmma_fp8_int4_three_stage", "FP8 wgmma three-stage"),
                    ("ours:prefill_fa3_wgmma_fp8_int4_serial", "FP8 wgmma serial"),
                    ("ours:prefill_fa2_mma_f16_int4", "FA2 mma.sync"))
HQ, D = 32, 128


def prefill_flops(b, s):
    return 2 * 2 * b * HQ * s * s * D / 2  # causal: QK^T and PV over half the square


def peer_errors(peers, tag):
    return [e for e in peers.get("errors", []) if e.startswith(tag)]


def attach(row, peer_us, names, errors):
    row["peers_us"] = {k: peer_us.get(k) for k in names}
    row["speedup_vs_peers"] = {k: (v / row["us"] if v and row.get("us") else None) for k, v in row["peers_us"].items()}
    if errors:
        row["peers_error"] = errors


def merge(ours, peers):
    hbm = ours["hbm_read_gbps"]
    decode_peers = {(r["B"], r["ctx"]): r for r in peers.get("decode", [])}
    prefill_peers = {(r["B"], r["S"]): r for r in peers.get("prefill", [])}
    rows = []
    for r in ours["rows"]:
        row = dict(r)
        if r["case"] == "decode":
            row["case"] = "decode_l3_8b_32q8kv_d128"
            p = decode_peers.get((r["B"], r["ctx"]))
            if p and r["page_size"] == 64:  # rotated (HBM) and L2-warm (as the peers run) alike
                attach(row, p["us"], DECODE_PEERS, peer_errors(peers, f"decode B={r['B']} ctx={r['ctx']} "))
                row["peers_kv_bytes"] = p.get("kv_bytes")
            row["hbm_read_gbps"] = hbm
        elif r["case"] == "prefill":
            row["case"] = "prefill_causal_l3_8b_32q8kv_d128"
            p = prefill_peers.get((r["B"], r["S"]))
            if p:
                attach(row, p["us"], PREFILL_PEERS, peer_errors(peers, f"prefill B={r['B']} S={r['S']} "))
                row["peers_tflops"] = {k: (prefill_flops(r["B"], r["S"]) / v / 1e6 if v else None)
                                       for k, v in row["peers_us"].items()}
        rows.append(row)
    return rows


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def markdown(device, date, commit, ours, rows, peers, notes):
    hbm = ours["hbm_read_gbps"]
    lines = [f"# Attention on {device}, {date} (commit {commit[:10]})", ""] + [f"Note: {n}" for n in notes] + ["",
             f"HBM in the same run: read stream {hbm:.0f} GB/s (the % column), device-to-device copy "
             f"{ours['hbm_copy_gbps']:.0f} GB/s (read + write). Ours rotates over >= 256 MB of caches (no L2 reuse) "
             "unless marked L2-warm; the peers' decode reuses one cache (small cases partly L2-resident). "
             "× peer = peer time / our time (> 1: we are faster).", "",
             "## Decode (1 query token, 32 q / 8 kv heads, d = 128, page 64)", "",
             "| B | ctx | variant | ours µs | GB/s (KV) | % HBM read | FBGEMM INT4 µs | × FBGEMM INT4 | FBGEMM FP8 µs "
             "| × FBGEMM FP8 | cuDNN BF16 µs | × cuDNN BF16 | FA2 BF16 µs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["case"].startswith("decode"):
            continue
        p, x = r.get("peers_us", {}), r.get("speedup_vs_peers", {})
        page = "" if r["page_size"] == 64 else f" (page {r['page_size']})"
        variant = r["variant"].replace("ours:splitkv_int4", "split-KV").replace(":", " ") or "split-KV"
        lines.append(f"| {r['B']} | {r['ctx']}{page} | {variant} | {r['us']:.1f} | {r['gbps']:.0f} | "
                     f"{100 * r['hbm_fraction']:.0f} | {fmt(p.get('fbgemm_int4'))} | {fmt(x.get('fbgemm_int4'), '.2f')} | "
                     f"{fmt(p.get('fbgemm_fp8'))} | {fmt(x.get('fbgemm_fp8'), '.2f')} | {fmt(p.get('sdpa_cudnn_bf16'))} | "
                     f"{fmt(x.get('sdpa_cudnn_bf16'), '.2f')} | {fmt(p.get('sdpa_flash_bf16'))} |")
    lines += ["", "## Prefill, causal (TFLOP/s = 2·2·B·H·S²·D/2 / time)", "",
              "| B | S | " + " | ".join(f"ours {name}" for _, name in PREFILL_VARIANTS) +
              " | cuDNN FP8 | cuDNN BF16 | FA2 BF16 | three-stage × cuDNN FP8 | × cuDNN BF16 | × FA2 BF16 |",
              "|---|---|" + "---|" * (len(PREFILL_VARIANTS) + 6)]
    shapes = sorted({(r["B"], r["S"]) for r in rows if r["case"].startswith("prefill")})
    for b, s in shapes:
        by_variant = {r["variant"]: r for r in rows if r["case"].startswith("prefill") and (r["B"], r["S"]) == (b, s)}
        ours_cells = [fmt(by_variant[v]["tflops"]) if v in by_variant else "—" for v, _ in PREFILL_VARIANTS]
        best = by_variant.get(PREFILL_VARIANTS[0][0], {})
        t, x = best.get("peers_tflops", {}), best.get("speedup_vs_peers", {})
        lines.append(f"| {b} | {s} | " + " | ".join(ours_cells) +
                     f" | {fmt(t.get('cudnn_fp8'), '.0f')} | {fmt(t.get('sdpa_cudnn_bf16'), '.0f')} | "
                     f"{fmt(t.get('sdpa_flash_bf16'), '.0f')} | {fmt(x.get('cudnn_fp8'), '.2f')} | "
                     f"{fmt(x.get('sdpa_cudnn_bf16'), '.2f')} | {fmt(x.get('sdpa_flash_bf16'), '.2f')} |")
    fp8_out = [r for r in rows if r["case"].startswith("prefill") and r["variant"].endswith(":fp8_out")]
    if fp8_out:
        lines += ["", "FP8 output option (per-token scale for o_proj, same launch): " +
                  "; ".join(f"B={r['B']} S={r['S']} {r['us']:.1f} µs ({r['tflops']:.1f} TFLOP/s)" for r in fp8_out)]
    lines += ["", "## Fused RoPE + quantize + paged cache write (32 q / 8 kv heads, d = 128)", "",
              "| case | tokens | µs | GB/s | % HBM |", "|---|---|---|---|---|"]
    for r in rows:
        if r["case"].startswith("quantize"):
            lines.append(f"| {r['case']} | {r['tokens']} | {r['us']:.1f} | {r['gbps']:.0f} | {100 * r['hbm_fraction']:.0f} |")
    if peers.get("errors"):  # one line per message, the cases it hit listed once
        grouped = {}
        for e in peers["errors"]:
            case, _, message = e.partition(": ")
            grouped.setdefault(message, []).append(re.sub(r" split=\d+", "", case))
        lines += ["", "Peer errors (full list in the peers' fbgemm_peers.json):", ""]
        lines += [f"- {m} — {', '.join(dict.fromkeys(cases))}" for m, cases in grouped.items()]
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--suffix", default="")
    ap.add_argument("--note", action="append", default=[], help="a line for the markdown and the JSON")
    a = ap.parse_args()
    ours = json.load(open(a.ours))
    peers = json.load(open(a.peers)) if os.path.exists(a.peers) else {"errors": ["peers file missing"]}
    rows = merge(ours, peers)
    device = ours["device"]
    short = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    short = "h100" if "h100" in short else ("h200" if "h200" in short else short)
    base = os.path.join(a.out_dir, f"attention-{short}-{a.date}" + (f"-{a.suffix}" if a.suffix else ""))
    result = {"area": "attention", "device": device, "date": a.date, "commit": a.commit, "command": a.command,
              "hbm_read_gbps": ours["hbm_read_gbps"], "hbm_copy_gbps": ours["hbm_copy_gbps"],
              "peers_torch": peers.get("torch"), "notes": a.note, "rows": rows}
    write_atomically(base + ".json", json.dumps(result, indent=1) + "\n")
    write_atomically(base + ".md", markdown(device, a.date, a.commit, ours, rows, peers, a.note))
    print(base + ".json", base + ".md")


if __name__ == "__main__":
    main()
