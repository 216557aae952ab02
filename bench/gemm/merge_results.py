#!/usr/bin/env python3
"""Merges one device run of bench_gemm (JSON lines), FBGEMM's peers (torch_fbgemm_peers.py's JSON) and
CUTLASS example 55 (cutlass_ex55_int4fp8.sh's log) into bench/results/gemm-<device>-<date>.json
(schema: ../shared/BENCH_RESULTS.md) and a markdown table beside it.

usage: merge_results.py RUN_DIR --commit SHA --command "..." [--date YYYY-MM-DD] [--out-dir bench/results]
                        [--name gemm-decode]  (file name prefix; default gemm) [--suffix -v6]
RUN_DIR holds bench_gemm.jsonl, fbgemm_peers.json (optional) and ex55.log (optional).
"""
import argparse, datetime, json, os, re

ap = argparse.ArgumentParser()
ap.add_argument("run_dir")
ap.add_argument("--commit", required=True)
ap.add_argument("--command", required=True)
ap.add_argument("--date", default=datetime.date.today().isoformat())
ap.add_argument("--out-dir", default="bench/results")
ap.add_argument("--name", default="gemm")
ap.add_argument("--suffix", default="", help="appended to the file name (a second run of the same day: -v6)")
a = ap.parse_args()

lines = [json.loads(l) for l in open(os.path.join(a.run_dir, "bench_gemm.jsonl")) if l.strip()]
header = next(l for l in lines if "device" in l)
rows = [l for l in lines if "variant" in l]
sweeps = [l for l in lines if any(key.startswith("sweep") for key in l)]

fbgemm, fbgemm_errors = {}, []
fb_path = os.path.join(a.run_dir, "fbgemm_peers.json")
if os.path.exists(fb_path):
    fb = json.load(open(fb_path))
    fbgemm_errors = fb.get("errors", [])
    for r in fb.get("gemm", []):
        fbgemm[(r["N"], r["K"], r["M"])] = r["us"]

ex55 = {}
ex_path = os.path.join(a.run_dir, "ex55.log")
if os.path.exists(ex_path):
    for line in open(ex_path):
        m = re.match(r"N=(\d+) K=(\d+) tokens=(\d+) cutlass_ex55_ms=([\d.]+)", line)
        if m:
            ex55[(int(m[1]), int(m[2]), int(m[3]))] = float(m[4]) * 1e3

read_gbps, peak = header["read_gbps"], header["fp8_peak_tflops"]
out_rows = []
for r in rows:
    key = (r["N"], r["K"], r["M"])
    peers = dict(r.get("peers_us", {}))
    errors = {}
    if r["N"]:
        fb = fbgemm.get(key)
        if fb is None:
            peers["fbgemm_f8i4bf16_shuffled"] = None
            errors["fbgemm_f8i4bf16_shuffled"] = "not measured for this shape/M" if fbgemm else "FBGEMM did not run"
        else:
            peers["fbgemm_f8i4bf16_shuffled"] = fb.get("fbgemm_f8i4_g128")
            peers["fbgemm_f8f8bf16_rowwise"] = fb.get("fbgemm_f8f8_rowwise")
            peers["torch_cublaslt_fp8"] = fb.get("cublaslt_fp8")
        peers["cutlass_mixed_int4_fp8"] = ex55.get(key)
        if key not in ex55:
            errors["cutlass_mixed_int4_fp8"] = "ex55 not run for this shape/M"
    row = {k: r[k] for k in ("case", "M", "N", "K", "variant", "us", "tflops", "gbps")}
    row["peers_us"] = peers
    if errors:
        row["peers_error"] = errors
    if r["N"]:
        row["hbm_roofline_fraction"] = round(r["weight_bytes"] / (read_gbps * 1e3) / r["us"], 3)
        row["fp8_peak_fraction"] = round(r["tflops"] / peak, 3)
    out_rows.append(row)

device_tag = "h100" if "H100" in header["device"] else re.sub(r"\W+", "-", header["device"].lower())
base = os.path.join(a.out_dir, f"{a.name}-{device_tag}-{a.date}{a.suffix}")
doc = {"area": "gemm", "device": header["device"], "date": a.date, "commit": a.commit, "command": a.command,
       "ceilings": {"hbm_read_gbps": read_gbps, "copy_gbps_read_plus_write": header["copy_gbps"],
                    "fp8_peak_tflops_cublaslt_8192": peak},
       "dispatch_sweep": sweeps, "peers_errors": fbgemm_errors, "rows": out_rows}
json.dump(doc, open(base + ".json", "w"), indent=1)


def ratio(peer, us):
    return f"{peer / us:.2f}" if peer else "–"


with open(base + ".md", "w") as f:
    f.write(f"# INT4×FP8 GEMM, {header['device']}, {a.date} (commit {a.commit[:10]})\n\n")
    f.write(f"Ceilings measured in the same run: HBM read {read_gbps} GB/s (streaming read of 2 GiB), "
            f"copy {header['copy_gbps']} GB/s (read+write), cuBLASLt FP8 8192³ {peak} TFLOP/s.\n")
    f.write("Ratios are peer µs / our µs (> 1: we are faster). HBM% = INT4 weight bytes / HBM read bandwidth / "
            "time; FP8% = TFLOP/s / cuBLASLt peak.\n\n")
    f.write("| case | M | variant | µs | TFLOP/s | GB/s | ×cuBLASLt FP8 | ×cuBLAS BF16 | ×FBGEMM f8i4 | ×CUTLASS ex55 | HBM% | FP8% |\n")
    f.write("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in out_rows:
        if not r["N"]:
            continue
        p = r["peers_us"]
        f.write(f"| {r['case']} | {r['M']} | {r['variant']} | {r['us']:.1f} | {r['tflops']:.0f} | {r['gbps']:.0f} | "
                f"{ratio(p.get('cublaslt_fp8'), r['us'])} | {ratio(p.get('cublas_bf16'), r['us'])} | "
                f"{ratio(p.get('fbgemm_f8i4bf16_shuffled'), r['us'])} | {ratio(p.get('cutlass_mixed_int4_fp8'), r['us'])} | "
                f"{100 * r['hbm_roofline_fraction']:.0f} | {100 * r['fp8_peak_fraction']:.0f} |\n")
    f.write("\nRMSNorm → FP8 (K = 4096):\n\n| M | µs | GB/s |\n|---|---|---|\n")
    for r in out_rows:
        if not r["N"]:
            f.write(f"| {r['M']} | {r['us']:.1f} | {r['gbps']:.0f} |\n")
print("wrote", base + ".json", base + ".md")
