#!/usr/bin/env bash
# Install everything (with the dev tools) and run lint, format check, type check and the test suite.
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
