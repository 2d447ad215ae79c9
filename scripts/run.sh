#!/usr/bin/env bash
# Install everything and run the main job on the embedded default (mnist5k + smallcnn + PGD).
# Extra arguments are Hydra overrides, e.g. scripts/run.sh attack=fb_hsja model=resnet50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m advsuite "$@"
