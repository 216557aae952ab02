#!/usr/bin/env bash
# Device run for the INT4 x FP8 GEMM (issue #8), in one call: GPU tests, compute-sanitizer on a few
# shapes, the benchmark with cuBLASLt/cuBLAS, FBGEMM's peers and CUTLASS example 55, all on the same
# machine. Usage: bash scripts/device/gemm.sh [test|bench|all]
# Carry: build-gemm/bin, .whl/fbgemm_gpu_genai-1.6.0-*.whl, .peers/ex55/ex55_i4f8 (built here).
# Then: python3 bench/gemm/merge_results.py <files_at> --commit ... --command ...
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-/tmp/gemm-out}
mkdir -p "$OUT"
BIN=build-gemm/bin
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt"

if [[ $MODE == test || $MODE == all ]]; then
  timeout 240 $BIN/kernels_gemm_gpu_test > "$OUT/gpu_test.log" 2>&1
  echo "gpu test rc=$?"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
    --gtest_filter='*smollm2_135m_gate_up_m37*:*llama3_8b_o_m1:*llama3_8b_qkv_m300*:GemmGpu.RmsNorm*' \
    > "$OUT/sanitizer.log" 2>&1
  echo "memcheck rc=$?"
  timeout 90 compute-sanitizer --tool racecheck $BIN/kernels_gemm_gpu_test --gtest_filter='*smollm2_135m_o_m37*' \
    >> "$OUT/sanitizer.log" 2>&1
  echo "racecheck rc=$?"
fi

if [[ $MODE == bench || $MODE == all ]]; then
  timeout 300 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  if ls .whl/fbgemm_gpu_genai-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/fbgemm_gpu_genai-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PARTS=gemm \
      GEMM_M=${FBGEMM_M:-1,4,16,32,64,128,256,512,1024,2048,4096,8192,16384} \
      timeout 240 python3 bench/peers/torch_fbgemm_peers.py > "$OUT/fbgemm.log" 2>&1
    echo "fbgemm rc=$?"
  fi
  if [[ -x .peers/ex55/ex55_i4f8 ]]; then
    timeout 150 bash bench/peers/cutlass_ex55_int4fp8.sh .peers/ex55/ex55_i4f8 > "$OUT/ex55.log" 2>&1
    echo "ex55 rc=$?"
  fi
fi

# Summary last (the device reply carries the end of the output).
[[ -f $OUT/gpu_test.log ]] && grep -E "^\[  (PASSED|FAILED) " "$OUT/gpu_test.log" | head -20
[[ -f $OUT/gpu_test.log ]] && grep "worst" "$OUT/gpu_test.log" | sort -t= -k2 -rn | head -2
[[ -f $OUT/sanitizer.log ]] && grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log"
[[ -f $OUT/bench.log ]] && grep -E "bf16 +ours|GB/s \(read" "$OUT/bench.log" | grep -E "M=(1|16|64|256|1024|4096|16384) |read" | head -60
[[ -f $OUT/fbgemm.log ]] && grep -E "ERROR|gate_up" "$OUT/fbgemm.log" | head -14
[[ -f $OUT/ex55.log ]] && head -8 "$OUT/ex55.log"
