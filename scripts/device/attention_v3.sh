#!/usr/bin/env bash
# Device calls of the attention v3 work (FP8 wgmma prefill speed, FP8 output, small-batch decode).
# Binaries prebuilt in build-attn2/bin (carried); the peers need .whl/ carried.
#   V3_PROFILE=1: ncu of the FP8 prefill (B=1 and B=16 at S=4k: speed of light, warp states, tensor
#                 pipes, shared-memory bank conflicts, source hot spots) and of the kernel it replaces
#                 (bench_attention_v2, if present: the previous build, for the same shapes and timings;
#                 bench_attention_noconv, if present: a diagnostic build without the INT4 -> FP8 conversion).
#   V3_TESTS=1:   GPU tests of the attention kernels, memcheck and racecheck on the small FP8 cases.
#   V3_QUICK=1:   a few prefill and small-batch decode timings, this build and bench_attention_v2.
#   V3_FP8_OUT=1: prefill and decode with and without the FP8 output option, and the mma.sync prefill.
#   V3_BENCH=1:   bench_attention (decode, quantize, prefill suite) into $OUT/ours.json.
#   V3_DIAG=1:    prefill timings of diagnostic builds (bench_attention_noconv, _nopp, if present) beside
#                 the shipped one, and ncu stall reasons / pipe use of the shipped prefill.
#   V3_PEERS=1:   bench/peers/torch_fbgemm_peers.py (decode and prefill peers) into $OUT/fbgemm_peers.json.
# Logs: $OUT/tests.log, sanitizer.log, bench.log, ncu_*.txt, peers.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=build-attn2/bin
out=${OUT:-/tmp/attention-v3-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/bench.log"

if [[ "${V3_TESTS:-0}" == 1 ]]; then
  echo "== GPU tests, memcheck and racecheck (side by side: the tests are bound by their CPU references)"
  timeout 240 $bin/kernels_attention_gpu_test --gtest_filter="${V3_TEST_FILTER:-*}" > "$out/tests.log" 2>&1 &
  tests=$!
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 $bin/kernels_attention_gpu_test \
    --gtest_filter='*Fp8WgmmaPrefillSmallCases*:*Quantize*:*Launchers*:*Fp8Output*' > "$out/sanitizer.log" 2>&1 &
  memcheck=$!
  timeout 240 compute-sanitizer --tool racecheck --error-exitcode 9 $bin/kernels_attention_gpu_test \
    --gtest_filter='*Fp8WgmmaPrefillSmallCases*' > "$out/racecheck.log" 2>&1 &
  racecheck=$!
  wait $tests; echo "tests exit $?"
  grep -E "^\[  (  OK|FAILED|PASSED|SKIPPED)|Failure|Expected|Which|actual|seed" "$out/tests.log" | head -60
  wait $memcheck; echo "memcheck exit $?"; tail -3 "$out/sanitizer.log"
  wait $racecheck; echo "racecheck exit $?"; grep -E "RACECHECK SUMMARY|hazard|Error" "$out/racecheck.log" | head -8
  cat "$out/racecheck.log" >> "$out/sanitizer.log"; rm -f "$out/racecheck.log"
fi

if [[ "${V3_PROFILE:-0}" == 1 ]]; then
  echo "== quick timings: this build vs the previous one (bench_attention_v2)"
  for shape in "1 1024" "1 4096" "16 4096" "1 16384" "16 16384"; do
    for k in three_stage serial; do timeout 60 $bin/bench_attention --prefill $shape $k 2>&1 | grep prefill; done
    [[ -x $bin/bench_attention_v2 ]] && timeout 60 $bin/bench_attention_v2 --prefill $shape three_stage 2>&1 |
      sed 's/^prefill/v2 prefill/' | grep prefill
    # Diagnostic build without the producer's INT4 -> FP8 conversion (wrong output): its cost.
    [[ -x $bin/bench_attention_noconv ]] && timeout 60 $bin/bench_attention_noconv --prefill $shape three_stage 2>&1 |
      sed 's/^prefill/noconv prefill/' | grep prefill
  done | tee -a "$out/bench.log"
  sections="--section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats --section InstructionStats"
  for shape in "1 4096" "16 4096"; do
    tag=${shape// /_}
    timeout 90 ncu --clock-control none --kernel-name regex:prefill_sm90_kernel --launch-count 1 $sections \
      --section SourceCounters $bin/bench_attention --prefill $shape three_stage > "$out/ncu_v3_$tag.txt" 2>&1
  done
  [[ -x $bin/bench_attention_v2 ]] && timeout 90 ncu --clock-control none --kernel-name regex:prefill_sm90_kernel \
    --launch-count 1 $sections $bin/bench_attention_v2 --prefill 1 4096 three_stage > "$out/ncu_v2_1_4096.txt" 2>&1
  for f in "$out"/ncu_*.txt; do
    echo "-- $f"
    grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc Active|Warp Cycles Per Issued|Registers Per|Achieved Occupancy|Bank Conflicts|Stall|stall" "$f" | head -24
  done
fi

if [[ "${V3_QUICK:-0}" == 1 ]]; then
  echo "== quick timings: prefill and small-batch decode, this build vs the previous one (bench_attention_v2)"
  for b in ours v2; do
    exe=$bin/bench_attention; [[ $b == v2 ]] && exe=$bin/bench_attention_v2
    [[ -x $exe ]] || continue
    for shape in "1 4096" "16 4096" "1 16384"; do
      timeout 60 $exe --prefill $shape three_stage 2>&1 | grep prefill | sed "s/^/$b /"
    done
    for shape in "1 1024" "1 4096" "1 32768" "4 4096" "16 4096"; do
      timeout 60 $exe --decode $shape 2>&1 | grep -E "decode" | sed "s/^/$b /"
    done
  done | tee -a "$out/bench.log"
fi

if [[ "${V3_FP8_OUT:-0}" == 1 ]]; then
  echo "== the FP8 output option against the BF16-only launch (and the mma.sync prefill, whose registers it had raised)"
  for c in "--prefill 1 4096 three_stage" "--prefill 16 4096 three_stage" "--decode 1 4096" "--decode 16 16384"; do
    for o in "" fp8_out; do timeout 60 $bin/bench_attention $c $o 2>&1 | grep -E "^(prefill|decode)"; done
  done | tee -a "$out/bench.log"
  for c in "--prefill 1 4096 fa2" "--prefill 16 16384 fa2"; do timeout 60 $bin/bench_attention $c 2>&1 | grep prefill; done |
    tee -a "$out/bench.log"
fi

if [[ "${V3_BENCH:-0}" == 1 ]]; then
  echo "== ours"
  timeout 240 $bin/bench_attention "$out/ours.json" 2>&1 | tee -a "$out/bench.log" | grep -E "decode|prefill|HBM|quantize" | tail -70
fi

if [[ "${V3_DIAG:-0}" == 1 ]]; then
  echo "== diagnostic builds of the prefill (not the shipped code): without the INT4 -> e4m3 conversion, without ping-pong"
  for shape in "1 4096" "16 4096" "1 16384"; do
    for v in "" _noconv _nopp; do
      [[ -x $bin/bench_attention$v ]] && timeout 60 $bin/bench_attention$v --prefill $shape three_stage 2>&1 |
        grep prefill | sed "s/^/${v:-_shipped} /"
    done
  done | tee -a "$out/bench.log"
  echo "== ncu: stall reasons and pipe use of the three-stage prefill, B=1 S=4k"
  timeout 90 ncu --clock-control none --kernel-name regex:prefill_sm90_kernel --launch-count 1 \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__pipe_.*(tensor|alu|fma|fmaheavy|shared|xu).*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:sm__inst_executed_pipe_(xu|alu|fma|lsu|uniform)\.avg\.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum" \
    $bin/bench_attention --prefill 1 4096 three_stage > "$out/ncu_stalls.txt" 2>&1
  grep -vE "^==PROF==|^\[|^  *$" "$out/ncu_stalls.txt" | awk '$NF != "0" && $NF != "0.00"' | head -60
fi

if [[ "${V3_PEERS:-0}" == 1 ]]; then
  echo "== peers"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fbgemm_gpu_genai-*.whl .whl/nvidia_cudnn_frontend-*.whl && export PYTHONPATH=/tmp/site
  PYTHONUNBUFFERED=1 PARTS=${V3_PEER_PARTS:-decode,prefill} OUT="$out" timeout 200 python3 bench/peers/torch_fbgemm_peers.py 2>&1 |
    tee "$out/peers.log" | grep -v "^ERROR" | tail -30
fi
