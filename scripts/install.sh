#!/usr/bin/env bash
# Create .venv (if needed) and install advsuite into it. Usage: scripts/install.sh [extras]
# Sourced by run.sh and test.sh; skips the pip work when nothing changed since the last install.
#
# CPU-only machines: ADVSUITE_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/run.sh
# takes the CPU builds of torch and torchvision from PyTorch's own index instead of PyPI, whose Linux
# x86_64 wheels are CUDA builds (about 5.5 GB installed with their NVIDIA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
index="${ADVSUITE_TORCH_INDEX:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.advsuite-installed"
digest="$( (cat pyproject.toml setup.py scripts/install.sh; echo "$index") | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
# an install with extras also serves a plain one
if [ "$have" != "$digest $extras" ] && { [ -n "$extras" ] || [ "${have%% *}" != "$digest" ]; }; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch and torchvision first, pinned as a pair: a torchvision built for another torch fails to import
  .venv/bin/python -m pip install --quiet ${index:+--index-url "$index"} "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  # the tests cross-check AutoAttack against torchattacks; its metadata pins requests 2.25 (which clashes with
  # huggingface_hub's idna), but it never imports requests, so it goes in without its dependencies
  if [[ "$extras" == *dev* ]]; then .venv/bin/python -m pip install --quiet --no-deps "torchattacks==3.5.1"; fi
  echo "$digest $extras" > "$stamp"
fi
