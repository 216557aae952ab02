#!/usr/bin/env bash
# One device call for the attention area: GPU tests, compute-sanitizer on small cases, our
# benchmark, then the peers in the same call. Binaries come prebuilt in build-attn/bin (carried);
# the peers need .whl/ carried (fbgemm-gpu-genai 1.6.0, nvidia-cudnn-frontend).
# ATTN_PEERS=0 / ATTN_RACECHECK=0 / ATTN_NCU=0 skip those parts; ATTN_BENCH=prefill times only prefill. Writes under $OUT: gpu_test.log, sanitizer.log, ours.json, bench.log, fbgemm_peers.json, peers.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=build-attn/bin
out=${OUT:-/tmp/attention-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$out/bench.log"

echo "== GPU tests"
$bin/kernels_attention_gpu_test 2>&1 | tee "$out/gpu_test.log" | grep -E "^\[  |Failure|error|Expected|Which|actual|seed" | head -60

echo "== compute-sanitizer (memcheck, small cases)"
compute-sanitizer --tool memcheck --error-exitcode 9 $bin/kernels_attention_gpu_test \
  --gtest_filter='*Quantize*:*ChunkedPrefill*:*Launchers*' > "$out/sanitizer.log" 2>&1
echo "memcheck exit $?"; tail -3 "$out/sanitizer.log"
if [[ "${ATTN_RACECHECK:-1}" == 1 ]]; then
  compute-sanitizer --tool racecheck --error-exitcode 9 $bin/kernels_attention_gpu_test \
    --gtest_filter='*ChunkedPrefill*' >> "$out/sanitizer.log" 2>&1
  echo "racecheck exit $?"; tail -3 "$out/sanitizer.log"
fi

echo "== ours"
if [[ "${ATTN_BENCH:-all}" == prefill ]]; then  # only the prefill shapes, one process each
  for b in 1 16; do for s in 512 1024 2048 4096 8192 16384; do
    $bin/bench_attention --prefill $b $s 2>&1 | tee -a "$out/bench.log"
  done; done
else
  $bin/bench_attention "$out/ours.json" 2>&1 | tee -a "$out/bench.log"
fi

if [[ "${ATTN_NCU:-1}" == 1 ]]; then
  echo "== ncu: split-KV main kernel at B=1 ctx=32k and B=16 ctx=4k (first launch, cold L2); prefill B=1 S=4k"
  for shape in "1 32768" "16 4096"; do
    ncu --clock-control none --kernel-name regex:paged_attention_splitkv_kernel --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
      --section WarpStateStats $bin/bench_attention --decode $shape >> "$out/ncu.txt" 2>&1
  done
  ncu --clock-control none --kernel-name regex:paged_attention_prefill_kernel --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section InstructionStats $bin/bench_attention --prefill 1 4096 >> "$out/ncu.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Achieved Occupancy|Grid Size|Compute \(SM\)|Warp Cycles Per Issued|Issue Slots Busy|Executed Ipc A|stalled" "$out/ncu.txt" | head -60
fi

if [[ "${ATTN_PEERS:-1}" == 1 ]]; then
  echo "== peers"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fbgemm_gpu_genai-*.whl .whl/nvidia_cudnn_frontend-*.whl && export PYTHONPATH=/tmp/site
  PYTHONUNBUFFERED=1 PARTS=decode,prefill OUT="$out" python3 bench/peers/torch_fbgemm_peers.py 2>&1 | tee "$out/peers.log" | grep -v "^ERROR" | tail -30
fi
