#!/usr/bin/env bash
# The FireQ ablation of docs/RESULTS.md on the real model (SmolLM2-135M-Instruct; its float baseline
# is the dequantized Q4_1 GGUF): quantizes the model with each recipe and evaluates the checkpoint
# with `fireq ppl` (simulated GPU numerics) on the default evaluation slice (docs/EVALUATION.md:
# the first WINDOWS windows of 2048 tokens of data/text/wiki.eval.txt). Calibration text:
# data/text/wiki.calib.txt (disjoint articles).
#
#   bash scripts/ablation.sh [ROW ...]     (no ROW: every row; ROW names are in the table below)
#   environment: FIREQ (the binary, default build/bin/fireq), OUT (checkpoints and logs, default
#   build/ablation), WINDOWS (default 16), THREADS (BLAS threads, default all cores)
#
# Existing checkpoints in OUT are reused; results are appended to OUT/results.tsv and printed as a
# markdown table. Runs on the CPU only (CI never runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
FIREQ=${FIREQ:-build/bin/fireq}
MODEL=data/models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-build/ablation}
WINDOWS=${WINDOWS:-16}
THREADS=${THREADS:-0}

# row name | recipe (preset or file; "-" = the float model itself) | description
ROWS=(
  "float|-|float (dequantized Q4_1), FP32 engine"
  "w4a8-plain|recipes/ablation/1-w4a8-plain.yaml|W4A8 (INT4 g128 FP8 scales x FP8 per-token), none of FireQ's techniques"
  "per-tensor|recipes/ablation/2-per-tensor.yaml|+ per-tensor scale s_t"
  "smoothing|recipes/ablation/3-smoothing.yaml|+ channel smoothing (gate/up 0.0096, down 0.015, type 2) and v_mul 0.9"
  "kv4|recipes/ablation/4-kv4.yaml|+ KV4 (INT4 K/V, FP8 scales) and FP8 queries, no RoPE-aware scaling"
  "pre-rope|recipes/ablation/5-pre-rope.yaml|+ pre-RoPE scaling (alpha 8)"
  "fireq-default|fireq-default|+ post-RoPE scaling (beta 8, top_k 8) = full FireQ, published settings"
  "w4a16|recipes/ablation/w4a16.yaml|W4A16 (INT4 g128 FP8 scales, per-tensor scale, BF16 activations)"
  "kv4-only|kv4|KV4 only (INT4 K/V with FP8 scales, FP8 queries)"
  "fireq-smollm2|recipes/fireq-smollm2.yaml|full FireQ tuned for SmolLM2-135M (g64, BF16 K/V scales)"
)

[ -x "$FIREQ" ] || { echo "ablation: $FIREQ not found (build first: bash scripts/setup.sh)" >&2; exit 1; }
[ -s "$MODEL" ] || { echo "ablation: $MODEL missing (run scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"

selected() {  # selected NAME [ROW ...]: no ROW selects every row
  local name=$1 want
  shift
  [ $# -eq 0 ] && return 0
  for want in "$@"; do [ "$want" = "$name" ] && return 0; done
  return 1
}

for row in "${ROWS[@]}"; do
  IFS='|' read -r name recipe description <<<"$row"
  selected "$name" "$@" || continue
  model=$MODEL quant_seconds=- size_mib=-
  if [ "$recipe" != "-" ]; then
    model="$OUT/$name"
    if [ ! -d "$model" ]; then
      echo "[ablation] $name: fireq quantize --recipe $recipe" >&2
      start=$(date +%s)
      "$FIREQ" quantize --model "$MODEL" --recipe "$recipe" --out "$model" --threads "$THREADS" \
        >"$OUT/$name.quantize.log" 2>&1 || { tail -3 "$OUT/$name.quantize.log" >&2; exit 1; }
      quant_seconds=$(( $(date +%s) - start ))
    fi
    size_mib=$(du -sm "$model" | cut -f1)
  fi
  echo "[ablation] $name: fireq ppl --model $model --max-windows $WINDOWS" >&2
  line=$("$FIREQ" ppl --model "$model" --max-windows "$WINDOWS" --threads "$THREADS" 2>"$OUT/$name.ppl.log" | head -1)
  ppl=$(awk '{print $2}' <<<"$line")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$name" "$recipe" "$ppl" "$quant_seconds" \
    "$size_mib" "$description" >>"$RESULTS"
  echo "[ablation] $name: perplexity $ppl" >&2
done

echo "| row | recipe | PPL ($WINDOWS x 2048 tokens) | checkpoint MiB |"
echo "|---|---|---|---|"
awk -F'\t' '{ if (!($2 in last)) order[++n] = $2; last[$2] = $0 } END {
  for (i = 1; i <= n; ++i) { split(last[order[i]], f, "\t"); printf "| %s | `%s` | %s | %s |\n", f[7], f[3], f[4], f[6] }
}' "$RESULTS"
