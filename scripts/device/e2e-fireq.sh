#!/usr/bin/env bash
# One device call for the CUDA engine's FireQ path (helper "engine"): GPU tests of both paths,
# compute-sanitizer on a short batched generation (decode graphs, chunked prefill mixed with
# decode), the real model SmolLM2-135M (FireQ, fireq-smollm2) against the CPU engine's simulated
# numerics, `fireq bench` of the FireQ and BF16 paths on Llama shapes, and the Hugging Face peers,
# all in the same call. Outputs in $OUT (at most 8 files come back): tests.log (tests, sanitizer),
# realmodel.json, bench.log (benches, peers), ours.json (every bench's rows), e2e_peers.json;
# bench/e2e/merge_results.py merges the last two here.
#
# Carried (the working tree travels anyway):
#   build-gpu/devlibs.tar.xz   host libraries the device image lacks (scripts/device/e2e.sh says how)
#   build-gpu/e2e-fireq.tar.xz bin/{fireq,fireq_e2e_check,runtime_cuda_fireq_test,runtime_cuda_engine_test}
#                              and, for the realmodel part, ref/ = the output of
#     fireq_e2e_check reference --checkpoint SMOLLM2_FIREQ --layers 0-29 --windows 2 --out ref
#   (tar -C DIR -cJf build-gpu/e2e-fireq.tar.xz bin ref; binaries xz to ~6 MB, the checkpoint to ~46 MB)
#
#   (bin/kernels_gemm_gpu_test too for the kernels part; bin/runtime_cuda_engine_test is optional)
#   E2E_PARTS=tests,kernels,sanitizer,realmodel,bench,bf16,extra,peers (default: all)
#   E2E_BENCH_ARGS: extra flags for the Llama-3-8B benches
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/e2e-out}
parts=${E2E_PARTS:-tests,kernels,sanitizer,realmodel,bench,bf16,extra,peers}
mkdir -p "$out" /tmp/devlibs /tmp/e2e
tar -C /tmp -xJf build-gpu/devlibs.tar.xz
tar -C /tmp/e2e -xJf build-gpu/e2e-fireq.tar.xz
bin=/tmp/e2e/bin
cublas_dir=$(dirname "$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=/tmp/devlibs:$cublas_dir:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used --format=csv
ldd $bin/fireq | grep "not found"
has() { [[ ",$parts," == *",$1,"* ]]; }

if has tests; then
  echo "== GPU tests (FireQ path, then BF16 path)"
  $bin/runtime_cuda_fireq_test > /tmp/e2e/fireq_test.log 2>&1
  echo "fireq tests exit $?"
  if [[ -x $bin/runtime_cuda_engine_test ]]; then
    $bin/runtime_cuda_engine_test > /tmp/e2e/bf16_test.log 2>&1
    echo "bf16 tests exit $?"
  fi
  touch /tmp/e2e/bf16_test.log
  cat /tmp/e2e/fireq_test.log /tmp/e2e/bf16_test.log >> "$out/tests.log"
  cat "$out/tests.log" | grep -E "^\[  |^\[correctness|Failure|Expected|Which|actual|error" | grep -v "^\[       OK\|^\[ RUN" | head -60
fi
if has kernels; then
  echo "== the row kernels the FireQ path calls between GEMMs (RMSNorm -> FP8, per-token FP8) vs their reference"
  $bin/kernels_gemm_gpu_test --gtest_filter='*RmsNorm*' > /tmp/e2e/kernels.log 2>&1
  echo "row-kernel tests exit $?"
  compute-sanitizer --tool memcheck --error-exitcode 9 $bin/kernels_gemm_gpu_test --gtest_filter='*RmsNorm*' \
    >> /tmp/e2e/kernels.log 2>&1
  echo "row-kernel memcheck exit $?"
  grep -E "^\[  |Failure|ERROR SUMMARY" /tmp/e2e/kernels.log | head -20; cat /tmp/e2e/kernels.log >> "$out/tests.log"
fi
if has sanitizer; then
  echo "== compute-sanitizer memcheck (FireQ: batched prefill, graph decode, chunked prefill mixed with decode)"
  compute-sanitizer --tool memcheck --error-exitcode 9 $bin/runtime_cuda_fireq_test \
    --gtest_filter='*GraphsAndMixed*' > /tmp/e2e/sanitizer.log 2>&1
  echo "memcheck exit $?"; tail -4 /tmp/e2e/sanitizer.log; cat /tmp/e2e/sanitizer.log >> "$out/tests.log"
fi
if has realmodel; then
  echo "== SmolLM2-135M FireQ on the GPU vs the CPU's simulated numerics"
  $bin/fireq_e2e_check gpu --reference /tmp/e2e/ref --out "$out/realmodel.json" 2>&1 | grep -v "^\[cuda\]"
  echo "realmodel exit $?"
fi
if has bench; then
  echo "== fireq bench, Llama-3-8B, FireQ path"
  $bin/fireq bench --path fireq --out /tmp/e2e/ours_fireq.json ${E2E_BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log" |
    grep -E "TTFT|tokens/s|plan|error|profile|^\[bench\]   "
fi
if has bf16; then
  echo "== fireq bench, Llama-3-8B, BF16 path"
  $bin/fireq bench --path bf16 --out /tmp/e2e/ours_bf16.json ${E2E_BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log" |
    grep -E "TTFT|tokens/s|error"
fi
if has extra; then
  echo "== fireq bench: Llama-2-7B and Llama-3-70B (FireQ)"
  $bin/fireq bench --shape llama2-7b --path fireq --ttft 1024,4096 --prefill-lengths 1024 --decode-batches 1,16,64 \
    --out /tmp/e2e/ours_llama2.json 2>&1 | tee -a "$out/bench.log" | grep -E "TTFT|tokens/s|plan|error"
  $bin/fireq bench --shape llama3-70b --path fireq --ttft 1024 --prefill-batch 4 --prefill-lengths 1024 \
    --decode-batches 1,16 --max-context 8192 --out /tmp/e2e/ours_70b.json 2>&1 | tee -a "$out/bench.log" |
    grep -E "TTFT|tokens/s|plan|error|GPU memory"
fi
if has peers; then
  echo "== Hugging Face peers"
  PYTHONUNBUFFERED=1 OUT="$out" timeout "${E2E_PEERS_TIMEOUT:-300}" python3 bench/e2e/torch_e2e_peers.py 2>&1 |
    tee -a "$out/bench.log" | grep -v Warning | tail -20
fi
python3 - "$out/ours.json" /tmp/e2e/ours_*.json <<'PY'
import json, sys
parts = [json.load(open(p)) for p in sys.argv[2:]]
if parts:
    json.dump({"area": "e2e", "device": parts[0]["device"], "rows": [r for p in parts for r in p["rows"]]},
              open(sys.argv[1], "w"), indent=1)
PY
ls -la "$out"
