"""A plain (non-editable) install works from any directory and ships the Hydra configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_from_another_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = wheels.glob("advsuite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"advsuite", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "advsuite/conf/config.yaml" in names and "advsuite/leaderboard/page.html" in names
    assert any(n.startswith("advsuite/attacks/whitebox/") for n in names)
    assert any(n.startswith("advsuite/conf/attack/") for n in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "ADVSUITE_HOME": str(tmp_path / "home")}
    probe = subprocess.run(
        [sys.executable, "-c", "import advsuite.attacks, advsuite.conf; print(advsuite.attacks.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(site))
    composed = subprocess.run(
        [sys.executable, "-m", "advsuite", "attack=fgsm", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert composed.returncode == 0, composed.stderr
    assert "advsuite.attacks" in composed.stdout and "mnist5k" in composed.stdout
