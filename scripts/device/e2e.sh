#!/usr/bin/env bash
# One device call for the CUDA engine (helper "gpu"): GPU tests of the BF16 path against the CPU
# reference (prints the [correctness] lines), compute-sanitizer on a short batched run, then
# `fireq bench` on Llama shapes and the Hugging Face peers in the same call, merged into
# $OUT/e2e.json / e2e.md. Binaries come prebuilt in build-gpu/bin (carried) with the host
# libraries they need that the device image lacks (build-gpu/devlibs.tar.xz: OpenBLAS, libgfortran,
# yaml-cpp, sentencepiece), carried too.
#   E2E_PARTS=tests,sanitizer,bench,peers (default: all)   E2E_BENCH_ARGS: extra `fireq bench` flags
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=build-gpu/bin
out=${OUT:-/tmp/e2e-out}
parts=${E2E_PARTS:-tests,sanitizer,bench,peers}
mkdir -p "$out" /tmp/devlibs
tar -C /tmp -xJf build-gpu/devlibs.tar.xz
cublas_dir=$(dirname "$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=/tmp/devlibs:$cublas_dir:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw,memory.used --format=csv
ldd $bin/fireq | grep "not found"
has() { [[ ",$parts," == *",$1,"* ]]; }

if has tests; then
  echo "== GPU tests"
  $bin/runtime_cuda_engine_test 2>&1 | tee "$out/gpu_test.log" | grep -E "^\[  |^\[correctness|^\[sampling|Failure|Expected|Which|actual|error" | head -60
fi
if has sanitizer; then
  echo "== compute-sanitizer memcheck (batched prefill + decode, continuous batching, sampling)"
  compute-sanitizer --tool memcheck --error-exitcode 9 $bin/runtime_cuda_engine_test \
    --gtest_filter='*ContinuousBatching*:*Sampling*' > "$out/sanitizer.log" 2>&1
  echo "memcheck exit $?"; tail -4 "$out/sanitizer.log"
fi
if has bench; then
  echo "== fireq bench"
  $bin/fireq bench --out "$out/ours.json" ${E2E_BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
fi
if has peers; then
  echo "== Hugging Face peers"
  PYTHONUNBUFFERED=1 OUT="$out" python3 bench/e2e/torch_e2e_peers.py 2>&1 | tee "$out/peers.log" | grep -v Warning | tail -20
fi
if [[ -f "$out/ours.json" ]]; then
  python3 bench/e2e/merge_results.py "$out/ours.json" "$out/e2e_peers.json" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    "E2E_PARTS=$parts E2E_BENCH_ARGS='${E2E_BENCH_ARGS:-}' bash scripts/device/e2e.sh" "$out/e2e" > /dev/null
  cat "$out/e2e.md"
fi
