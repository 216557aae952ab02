#!/usr/bin/env bash
# Device run for the INT4 x FP8 GEMM (issue #8), in one call: GPU tests, compute-sanitizer on a few
# shapes, the benchmark with cuBLASLt/cuBLAS, FBGEMM's peers and CUTLASS example 55, all on the same
# machine. Usage: bash scripts/device/gemm.sh [test|bench|all]   (binaries carried in build-gemm/bin)
set -uo pipefail
MODE=${1:-all}
OUT=${OUT:-/tmp/gemm-out}
mkdir -p "$OUT"
BIN=build-gemm/bin
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

if [[ $MODE == test || $MODE == all ]]; then
  timeout 300 $BIN/kernels_gemm_gpu_test 2>&1 | grep -v "^\[ RUN\|^\[       OK" | tee "$OUT/gpu_test.log" | tail -60
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
    --gtest_filter='*smollm2_135m_gate_up_m37*:*llama3_8b_o_m1:*llama3_8b_down_m300*:GemmGpu.RmsNorm*' 2>&1 |
    tail -8 | tee "$OUT/sanitizer.log"
  timeout 120 compute-sanitizer --tool racecheck $BIN/kernels_gemm_gpu_test --gtest_filter='*smollm2_135m_o_m37*' 2>&1 |
    tail -4 | tee -a "$OUT/sanitizer.log"
fi

if [[ $MODE == bench || $MODE == all ]]; then
  timeout 420 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -100
  if ls .whl/fbgemm_gpu_genai-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/fbgemm_gpu_genai-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PARTS=gemm \
      GEMM_M=${FBGEMM_M:-1,4,16,32,64,128,256,512,1024,2048,4096,8192,16384} \
      python3 bench/gemm/peers/torch_fbgemm_peers.py 2>&1 | tee "$OUT/fbgemm.log" | tail -60
  fi
  if [[ -x .peers/ex55/ex55_i4f8 ]]; then
    bash bench/gemm/peers/cutlass_ex55_int4fp8.sh .peers/ex55/ex55_i4f8 2>&1 | tee "$OUT/ex55.log"
  fi
fi
