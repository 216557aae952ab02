#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite. GPU tests report themselves as skipped
# where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure --timeout 1200 -j "$(nproc)"
