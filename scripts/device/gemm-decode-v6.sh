#!/usr/bin/env bash
# Device runs for the GEMM's decode kernel, v6-v8 (issue #8, M <= 64).
# MODE=probe (first call): the GPU tests that reach the decode kernel, ncu of the v5 kernel (carried
# old binary, gate_up M=1) and of the new one (gate_up M=1, 16, 64), a quick bench at M = 1..64
# (both kernels forced, cuBLASLt FP8).
# MODE=final: the GPU tests, ncu of gate_up M=1 and 16 (NCU=0: none), compute-sanitizer memcheck on a
# short filter, the bench over all shapes at M = 1, 4, 16, 32, 64 with cuBLASLt FP8 / cuBLAS BF16 and
# the decode split sweep (SWEEP=" ": none), and FBGEMM's f8i4bf16_shuffled
# (bench/peers/torch_fbgemm_peers.py) in the same call.
# Carry: build-gemm2/bin/kernels_gemm_gpu_test, build-gemm2/bin/bench_gemm; probe also
# build-gemm2/v5bin (v5 binaries); final also .whl/fbgemm_gpu_genai-1.6.0-cp312-cp312-manylinux_2_28_x86_64.whl
# and, to time a previous version in the same call, build-gemm2/v6bin/bench_gemm.
# Then: python3 bench/gemm/merge_results.py on the returned files (see bench/NOTES-gemm.md).
set -uo pipefail
OUT=${OUT:-/tmp/gemm-decode-out}
MODE=${MODE:-probe}
mkdir -p "$OUT"
BIN=build-gemm2/bin
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt"

timeout 120 $BIN/kernels_gemm_gpu_test \
  --gtest_filter='*_m1:*_m37:GemmGpu.Decode*:GemmGpu.Smallest*:*llama3_8b_qkv_m300' > "$OUT/gpu_test.log" 2>&1
echo "gpu test rc=$?"

profile() {  # name, binary and arguments
  local name=$1; shift
  timeout 90 ncu --clock-control none --kernel-name regex:w4a8_gemm_decode --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section InstructionStats \
    --section LaunchStats --section Occupancy --section SchedulerStats "$@" > "$OUT/ncu-$name.txt" 2>&1
  echo "ncu $name rc=$?"
}

if [[ $MODE == probe ]]; then
  profile v5-gate-up-m1 build-gemm2/v5bin/kernels_gemm_gpu_test --gtest_filter='*llama3_8b_gate_up_m1'
  profile v6-gate-up-m1 $BIN/bench_gemm --out /tmp/p1.jsonl --shape l3_gate_up --m 1
  profile v6-gate-up-m16 $BIN/bench_gemm --out /tmp/p2.jsonl --shape l3_gate_up --m 16
  profile v6-gate-up-m64 $BIN/bench_gemm --out /tmp/p3.jsonl --shape l3_gate_up --m 64
  timeout 150 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" --m 1,4,16,32,64 > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
else
  if [[ ${NCU:-1} == 1 ]]; then
    profile gate-up-m1 $BIN/bench_gemm --out /tmp/p1.jsonl --shape l3_gate_up --m 1
    profile gate-up-m16 $BIN/bench_gemm --out /tmp/p2.jsonl --shape l3_gate_up --m 16
  fi
  if [[ -x build-gemm2/v6bin/bench_gemm ]]; then  # the previous version, same machine and clocks
    timeout 90 build-gemm2/v6bin/bench_gemm --out "$OUT/bench_v6.jsonl" --m 1,4,16 > "$OUT/bench_v6.log" 2>&1
    echo "bench v6 rc=$?"
  fi
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
    --gtest_filter='*smollm2_135m_gate_up_m37:*llama3_8b_o_m1:*smollm2_135m_down_m1:GemmGpu.Decode*' > "$OUT/sanitizer.log" 2>&1
  echo "memcheck rc=$?"
  timeout 240 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" --m 1,4,16,32,64 ${SWEEP:---sweep-decode} > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  if ls .whl/fbgemm_gpu_genai-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/fbgemm_gpu_genai-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PARTS=gemm GEMM_M=1,4,16,32,64 \
      timeout 100 python3 bench/peers/torch_fbgemm_peers.py > "$OUT/fbgemm.log" 2>&1
    echo "fbgemm rc=$?"
  fi
fi

# Summary last (the device reply carries the end of the output), the verdicts at its very end.
for f in "$OUT"/ncu-*.txt; do
  [[ -f $f ]] || continue
  echo "== $f"; grep -E "Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|Eligible Warps|Active Warps Per|No Eligible|Achieved Occupancy|Registers Per|Executed Ipc A" "$f" | head -14
done
grep -E "read|wgmma|decode" "$OUT/bench.log" | grep -v sweep | head -80
[[ -f $OUT/bench_v6.log ]] && grep -E " decode " "$OUT/bench_v6.log" | head -30
[[ -f $OUT/fbgemm.log ]] && grep -E "ERROR|f8i4" "$OUT/fbgemm.log" | head -24
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$OUT/gpu_test.log" | head -12
grep "worst" "$OUT/gpu_test.log" | awk '{print $NF, $0}' | sort -rn | head -3
[[ -f $OUT/sanitizer.log ]] && grep -E "ERROR SUMMARY" "$OUT/sanitizer.log"
exit 0
