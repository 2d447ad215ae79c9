"""Bad input on the command line: checked before anything loads, one clear line, a failed record, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def advsuite(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "ADVSUITE_HOME": str(home), "HYDRA_FULL_ERROR": "0", **env}
    command = [sys.executable, "-m", "advsuite", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=600)


def records(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(home.glob("**/record.json"))]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("advsuite: error:")]
    return line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["n_samples=0"], "n_samples must be a whole number >= 1"),
        (["n_samples=-3"], "n_samples must be a whole number >= 1"),
        (["attack=hsja", "attack.budget=-5"], "budget must be an integer >= 1"),
        (["attack.epz=0.1"], "no option 'epz' (did you mean 'eps'?); valid options: eps, loss, norm"),
        (["+attack.epz=0.1"], "no option 'epz'"),  # Hydra's own hint for the typo leads here too
        (["task.targeted_selection=first"], "targeted_selection must be 'random' or 'next'"),
        (["defense.strength=3"], "defense none has no option 'strength'"),
        (["train.epoch=3"], "unknown training recipe keys ['epoch']"),
    ],
)
def test_bad_options_fail_before_anything_loads(tmp_path: Path, args: list[str], says: str) -> None:
    home = tmp_path / "home"
    line = one_line_error(advsuite(home, *args))
    assert says in line
    assert not (home / "zoo").exists()  # no data loaded, no model trained or read
    (record,) = records(home)  # the refused run is recorded as failed, with the same message
    assert record["status"] == "failed" and says in record["error"]


def test_full_error_gives_the_traceback(tmp_path: Path) -> None:
    result = advsuite(tmp_path, "n_samples=0", HYDRA_FULL_ERROR="1")
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_an_unwritable_home_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_line_error(advsuite(blocker / "home"))
    assert "cannot write to the advsuite home" in line and "ADVSUITE_HOME" in line


def test_a_corrupt_index_does_not_stop_runs(tmp_path: Path) -> None:
    (tmp_path / "results.sqlite").write_bytes(b"not a database" * 500)
    result = advsuite(tmp_path, "task=leaderboard")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "corrupt" in result.stderr and list(tmp_path.glob("results.sqlite.corrupt-*"))
    again = advsuite(tmp_path, "n_samples=0")  # and a failing run is indexed in the fresh index
    one_line_error(again)
    from advsuite.results import ResultsStore

    assert [r["status"] for r in ResultsStore(tmp_path).records(status=None)] == ["failed"]
