#!/usr/bin/env bash
# Device run for the GEMM's decode kernel (issue #8, M <= 64), in one short call: the GPU tests that
# reach it (plus a few wgmma regressions), compute-sanitizer memcheck/racecheck on decode cases, the
# benchmark at M = 1..64 (decode kernel, the wgmma kernel, cuBLASLt FP8 and cuBLAS BF16 in one
# process, the decode split sweep) and, time permitting, FBGEMM's f8i4bf16_shuffled at the same M.
# Carry: build-gemm2/bin, .whl/fbgemm_gpu_genai-1.6.0-cp312-cp312-manylinux_2_28_x86_64.whl.
# Then: python3 bench/gemm/merge_results.py on the returned files (see bench/NOTES-gemm.md).
set -uo pipefail
OUT=${OUT:-/tmp/gemm-decode-out}
mkdir -p "$OUT"
BIN=${BIN:-build-gemm2/bin}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt"

timeout 100 $BIN/kernels_gemm_gpu_test \
  --gtest_filter='*_m1:*_m37:GemmGpu.*:*llama3_8b_qkv_m300:*smollm2_135m_gate_up_m300' > "$OUT/gpu_test.log" 2>&1
echo "gpu test rc=$?"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
  --gtest_filter='*smollm2_135m_gate_up_m37:*llama3_8b_o_m1:*smollm2_135m_down_m1' > "$OUT/sanitizer.log" 2>&1
echo "memcheck rc=$?"
timeout 40 compute-sanitizer --tool racecheck --error-exitcode 9 $BIN/kernels_gemm_gpu_test \
  --gtest_filter='*smollm2_135m_o_m37' >> "$OUT/sanitizer.log" 2>&1
echo "racecheck rc=$?"

timeout 150 $BIN/bench_gemm --out "$OUT/bench_gemm.jsonl" --m 1,4,16,32,64 --sweep-decode > "$OUT/bench.log" 2>&1
echo "bench rc=$?"

if ls .whl/fbgemm_gpu_genai-*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fbgemm_gpu_genai-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PARTS=gemm GEMM_M=1,4,16,32,64 \
    timeout 80 python3 bench/peers/torch_fbgemm_peers.py > "$OUT/fbgemm.log" 2>&1
  echo "fbgemm rc=$?"
fi

# Summary last (the device reply carries the end of the output).
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$OUT/gpu_test.log" | head -12
grep "worst" "$OUT/gpu_test.log" | awk '{print $NF, $0}' | sort -rn | head -3
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log"
grep -E "read|bf16 +ours|wgmma" "$OUT/bench.log" | head -80
grep -E "sweep-decode" "$OUT/bench.log" | awk '{print $2, $3, $5, $6}' | tr '\n' ';' | head -c 3000; echo
[[ -f $OUT/fbgemm.log ]] && grep -E "ERROR|f8i4" "$OUT/fbgemm.log" | head -24
exit 0
