#!/usr/bin/env bash
# One device call for the CUDA engine's BF16 path (helper "gpu"): GPU tests of the BF16 path against the CPU
# reference (prints the [correctness] lines), compute-sanitizer on a short batched run, then
# `fireq bench` on Llama shapes and the Hugging Face peers in the same call, merged into
# $OUT/e2e.json / e2e.md. Binaries come prebuilt in build-gpu/bin (carried) with the host
# libraries they need that the device image lacks (build-gpu/devlibs.tar.xz: OpenBLAS, libgfortran,
# yaml-cpp, sentencepiece), carried too; make it once with
#   mkdir -p /tmp/devlibs && cp -L /lib/x86_64-linux-gnu/{libopenblas.so.0,libgfortran.so.5,libquadmath.so.0,\
#     libyaml-cpp.so.0.7,libsentencepiece.so.0} /tmp/devlibs && tar -C /tmp -cJf build-gpu/devlibs.tar.xz devlibs
# and call with carry ["build-gpu/bin/fireq", "build-gpu/bin/runtime_cuda_engine_test", "build-gpu/devlibs.tar.xz"].
#   E2E_PARTS=tests,sanitizer,bench,peers (default: all)   E2E_BENCH_ARGS: extra `fireq bench` flags
#   E2E_FALLBACK=path/to/fireq: benchmark with this binary instead when the GPU tests fail
#   E2E_EXTRA_SHAPES=1: also llama2-7b (short) and llama3-70b (refused in BF16) after the main bench
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

fireq=$bin/fireq
if has tests; then
  echo "== GPU tests"
  $bin/runtime_cuda_engine_test > "$out/gpu_test.log" 2>&1
  tests_rc=$?
  grep -E "^\[  |^\[correctness|^\[sampling|Failure|Expected|Which|actual|error" "$out/gpu_test.log" | head -60
  if [[ $tests_rc != 0 && -n "${E2E_FALLBACK:-}" ]]; then
    echo "GPU tests FAILED: benchmarking with $E2E_FALLBACK"; fireq=$E2E_FALLBACK
  fi
fi
if has sanitizer; then
  echo "== compute-sanitizer memcheck (batched prefill + decode, continuous batching, sampling)"
  compute-sanitizer --tool memcheck --error-exitcode 9 $bin/runtime_cuda_engine_test \
    --gtest_filter='*ContinuousBatching*:*Sampling*' > "$out/sanitizer.log" 2>&1
  echo "memcheck exit $?"; tail -4 "$out/sanitizer.log"
fi
if has bench; then
  echo "== fireq bench"
  $fireq bench --path bf16 --out "$out/ours.json" ${E2E_BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
  if [[ "${E2E_EXTRA_SHAPES:-0}" == 1 ]]; then
    $fireq bench --path bf16 --shape llama2-7b --ttft 1024 --prefill-batch 16 --decode-batches 1,16 --decode-steps 16 \
      --reps 2 --out "$out/ours_llama2.json" 2>&1 | grep -E "TTFT|tokens/s|plan|error" | tee -a "$out/bench.log"
    $fireq bench --path bf16 --shape llama3-70b 2>&1 | tail -1 | tee -a "$out/bench.log"
  fi
fi
if has peers; then
  echo "== Hugging Face peers"
  PYTHONUNBUFFERED=1 OUT="$out" timeout "${E2E_PEERS_TIMEOUT:-300}" python3 bench/e2e/torch_e2e_peers.py 2>&1 | tee "$out/peers.log" | grep -v Warning | tail -20
fi
if [[ -f "$out/ours.json" ]]; then
  python3 bench/e2e/merge_results.py "$out/ours.json" "$out/e2e_peers.json" "${E2E_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" \
    "E2E_PARTS=$parts E2E_BENCH_ARGS='${E2E_BENCH_ARGS:-}' bash scripts/device/e2e.sh" "$out/e2e" > /dev/null
  cat "$out/e2e.md"
fi
