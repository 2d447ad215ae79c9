#!/usr/bin/env bash
# Install everything (with the dev tools) and run lint, format check, type check and the test suite, then
# the numerically sensitive tests (marker `numerics`) again under AVX2 CPU kernels, so a threshold tuned to
# one CPU's rounding fails here rather than on a user's machine (baseline SSE4 kernels gave the AVX2 numbers
# to the digit: docs/benchmarks.md, "Test thresholds across CPU kernels").
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
echo "numerics again with avx2 kernels"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python -m pytest -m numerics "$@"
