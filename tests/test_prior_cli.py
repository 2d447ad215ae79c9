"""``task=prior`` from the command line (a CLI check, not a numerical one: not rerun under other kernels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_task_prior_from_the_command_line(advsuite_home: Path) -> None:
    env = {**os.environ, "ADVSUITE_HOME": str(advsuite_home), "HYDRA_FULL_ERROR": "0"}
    args = [
        "task=prior",
        "prior=pca",
        "model=cifarcnn",  # the victim: smallcnn is then a valid reference
        "prior.references=[smallcnn]",
        "prior.n_images=64",
        "prior.components=8",
        "prior.reference_recipe.epochs=1",
        "prior.reference_recipe.train_subset=256",
        "+prior.reference_recipe.test_subset=100",  # a key the YAML does not list needs Hydra's `+`
        "verbose=false",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "advsuite", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pca prior on mnist5k (trained)" in result.stdout
    assert "probe spread: effective dimension" in result.stdout and "WARNING" not in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("cached at ")]
    entry = Path(line.split()[2])
    assert entry.parent == advsuite_home / "zoo" / "priors" / "mnist5k"
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["spec"]["references"] == ["smallcnn"] and meta["n_gradients"] <= 64
    assert meta["references"][0]["arch"] == "smallcnn"
