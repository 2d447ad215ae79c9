#!/usr/bin/env bash
# Install everything (with the dev tools) and run lint, format check, type check and the test suite, then
# the numerically sensitive tests (marker `numerics`) again under AVX2 and baseline CPU kernels, so a
# threshold tuned to one CPU's rounding fails here rather than on a user's machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
# real data for the tests that use it, found beside the checkout when present
if [ -z "${ADVSUITE_DATA:-}" ] && [ -d ../shared/data ]; then
  export ADVSUITE_DATA="$(cd ../shared/data && pwd)"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy advsuite attacks defenses detectors
.venv/bin/python -m pytest "$@"
# torch's own kernels (ATEN_CPU_CAPABILITY) and oneDNN's and MKL's (convolutions, matmuls) all step down
for isa in "avx2 AVX2 AVX2" "default SSE41 SSE4_2"; do
  read -r aten onednn mkl <<< "$isa"
  echo "numerics again with $aten kernels"
  ATEN_CPU_CAPABILITY="$aten" ONEDNN_MAX_CPU_ISA="$onednn" MKL_ENABLE_INSTRUCTIONS="$mkl" \
    .venv/bin/python -m pytest -m numerics "$@"
done
