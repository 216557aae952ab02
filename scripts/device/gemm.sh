#!/usr/bin/env bash
# Device run for the INT4 x FP8 GEMM's wgmma kernel (issue #8, M > 16), in one call per mode:
#   probe: the GPU tests (TEST_FILTER), the bench at PROBE_M on PROBE_SHAPES (PROBE_SWEEP=--sweep
#          adds the tile sweep), ncu of the wgmma kernel on l3_gate_up at NCU_M with stall reasons;
#   final: all GPU tests, compute-sanitizer memcheck/racecheck on a short filter, the bench at
#          M = 128..16384 with cuBLASLt FP8 / cuBLAS BF16 in the same process, FBGEMM's
#          f8i4bf16_shuffled (bench/peers/torch_fbgemm_peers.py) and CUTLASS example 55, same machine.
# Usage: bash scripts/device/gemm.sh probe|final
# Carry: build-gemm/bin, .whl (fbgemm_gpu_genai-1.6.0 cp312), .peers/ex55 (the example-55 binary).
# Then: python3 bench/gemm/merge_results.py on the returned files (bench/NOTES-gemm.md, v6).
set -uo pipefail
MODE=${1:-final}
OUT=${OUT:-/tmp/gemm-out}
mkdir -p "$OUT"
BIN=${BIN:-build-gemm/bin}
LARGE_M=128,256,512,1024,2048,4096,8192,16384
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt"

timeout 200 $BIN/kernels_gemm_gpu_test --gtest_filter="${TEST_FILTER:-*}" > "$OUT/gpu_test.log" 2>&1
test_rc=$?
echo "gpu test rc=$test_rc"
# FALLBACK_BIN: a build of the last committed kernel, benchmarked instead when this one fails a test.
if [[ $test_rc != 0 && -n ${FALLBACK_BIN:-} ]]; then
  echo "tests failed: benchmarking $FALLBACK_BIN" | tee "$OUT/fallback.txt"
  BIN=$FALLBACK_BIN
fi

if [[ $MODE == probe ]]; then
  for shape in ${PROBE_SHAPES:-l3_o l3_gate_up l3_down}; do
    timeout 60 $BIN/bench_gemm --out "$OUT/bench_$shape.jsonl" --shape $shape --m ${PROBE_M:-256,1024,4096,16384} \
      ${PROBE_SWEEP:-} >> "$OUT/bench.log" 2>&1
    echo "bench $shape rc=$?"
  done
  for m in ${NCU_M:-4096}; do
    timeout 90 ncu --kernel-name regex:w4a8_gemm_sm90 --launch-count 1 --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
      --section WarpStateStats --section Occupancy --section LaunchStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
      $BIN/bench_gemm --out /tmp/ncu.jsonl --shape l3_gate_up --m $m > "$OUT/ncu-l3-gate-up-m$m.txt" 2>&1
    echo "ncu M=$m rc=$?"
  done
fi

if [[ $MODE == final ]]; then
  timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
    --gtest_filter='*llama3_8b_qkv_m300*:*smollm2_135m_gate_up_m300*:*llama2_7b_down_m300*' \
    > "$OUT/sanitizer.log" 2>&1
  echo "memcheck rc=$?"
  timeout 45 compute-sanitizer --tool racecheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
    --gtest_filter='*smollm2_135m_o_m300*' >> "$OUT/sanitizer.log" 2>&1
  echo "racecheck rc=$?"
  timeout 240 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" --m $LARGE_M > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  if ls .whl/fbgemm_gpu_genai-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/fbgemm_gpu_genai-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PARTS=gemm GEMM_M=$LARGE_M \
      timeout 150 python3 bench/peers/torch_fbgemm_peers.py > "$OUT/fbgemm.log" 2>&1
    echo "fbgemm rc=$?"
  fi
  if [[ -x .peers/ex55/ex55_i4f8 ]]; then
    timeout 100 bash bench/peers/cutlass_ex55_int4fp8.sh .peers/ex55/ex55_i4f8 > "$OUT/ex55.log" 2>&1
    echo "ex55 rc=$?"
  fi
fi

# Summary last (the device reply carries the end of the output).
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$OUT/gpu_test.log" | head -12
grep "worst" "$OUT/gpu_test.log" | awk '{print $NF, $0}' | sort -rn | head -3
[[ -f $OUT/sanitizer.log ]] && grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log"
grep -E "read|bf16 +ours" "$OUT/bench.log" | grep -vE "M=(1|4|16|32|64) " | head -60
[[ -f $OUT/sweep.log ]] && grep "^sweep" "$OUT/sweep.log"
for f in "$OUT"/ncu-*.txt; do
  [[ -f $f ]] && echo "== $f" && grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Issue Slots Busy|No Eligible|highest-utilized" "$f" | head -12
  [[ -f $f ]] && grep -E "issue_stalled" "$f" | awk '$NF > 0.05 {print $1, $NF}' | head -20
done
[[ -f $OUT/fbgemm.log ]] && grep -E "ERROR|f8i4" "$OUT/fbgemm.log" | head -24
[[ -f $OUT/ex55.log ]] && head -8 "$OUT/ex55.log"
exit 0
