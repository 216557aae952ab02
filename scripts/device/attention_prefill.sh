#!/usr/bin/env bash
# One device call for the FP8 wgmma prefill (attn2): its GPU tests, compute-sanitizer memcheck on
# them, the prefill benchmark of our three prefill kernels, a short ncu of the three-stage kernel,
# then the prefill peers (cuDNN FP8, SDPA cuDNN/FA2 BF16) in the same call. Binaries prebuilt in
# build-attn2/bin (carried); the peers need .whl/ carried. Writes under $OUT: gpu_test.log,
# sanitizer.log, ours_prefill.json, bench.log, ncu.txt, fbgemm_peers.json, peers.log.
# PREFILL_NCU=0 / PREFILL_PEERS=0 / PREFILL_SANITIZER=0 skip those parts; PREFILL_OTHER_TEST_BIN=<path>
# also runs another build's test binary (an earlier kernel version) beside the tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=build-attn2/bin
out=${OUT:-/tmp/attention-prefill-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/bench.log"

# The tests are bound by their CPU references: the test run and memcheck run side by side.
echo "== GPU tests (FP8 wgmma prefill, launcher checks) and compute-sanitizer memcheck"
timeout 200 $bin/kernels_attention_gpu_test --gtest_filter='*Fp8Wgmma*:*Launchers*' > "$out/gpu_test.log" 2>&1 &
tests=$!
if [[ "${PREFILL_SANITIZER:-1}" == 1 ]]; then
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $bin/kernels_attention_gpu_test \
    --gtest_filter='*Fp8Wgmma*' > "$out/sanitizer.log" 2>&1 &
  sanitizer=$!
fi
if [[ -n "${PREFILL_OTHER_TEST_BIN:-}" ]]; then  # another build's test binary (an earlier kernel version)
  timeout 200 "$PREFILL_OTHER_TEST_BIN" --gtest_filter='*Fp8Wgmma*' > "$out/gpu_test_other.log" 2>&1 &
  other=$!
fi
wait $tests; echo "tests exit $?"
grep -E "^\[  |Failure|error|Expected|Which|actual|seed|vs fp8" "$out/gpu_test.log" | head -80
if [[ -n "${PREFILL_OTHER_TEST_BIN:-}" ]]; then
  wait $other; echo "other build's tests exit $?"; grep -E "^\[  (  OK|FAILED)" "$out/gpu_test_other.log"
fi
if [[ "${PREFILL_SANITIZER:-1}" == 1 ]]; then
  wait $sanitizer; echo "memcheck exit $?"; tail -3 "$out/sanitizer.log"
fi

echo "== ours"
timeout 150 $bin/bench_attention --prefill-suite "$out/ours_prefill.json" 2>&1 | tee -a "$out/bench.log"

if [[ "${PREFILL_NCU:-1}" == 1 ]]; then
  echo "== ncu: three-stage FP8 prefill, B=1 S=4k"
  timeout 60 ncu --clock-control none --kernel-name regex:prefill_sm90_kernel --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
    $bin/bench_attention --prefill 1 4096 three_stage > "$out/ncu.txt" 2>&1
  grep -E "Duration|Compute \(SM\)|Achieved Occupancy|Registers Per|Issue Slots Busy|Executed Ipc A|Warp Cycles Per Issued|stall" "$out/ncu.txt" | head -30
fi

if [[ "${PREFILL_PEERS:-1}" == 1 ]]; then
  echo "== peers"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fbgemm_gpu_genai-*.whl .whl/nvidia_cudnn_frontend-*.whl && export PYTHONPATH=/tmp/site
  PYTHONUNBUFFERED=1 PARTS=prefill OUT="$out" timeout 150 python3 bench/peers/torch_fbgemm_peers.py 2>&1 |
    tee "$out/peers.log" | grep -v "^ERROR" | tail -20
fi
