"""Run records (atomic writes, config hashes) and the SQLite results index."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from advsuite.results import ResultsStore, config_hash, git_commit, package_versions, read_record, write_record
from advsuite.results import record as record_module


def make_record(home: Path, run_id: str, **overrides: Any) -> dict[str, Any]:
    """A small record in the documented schema, with its run directory under ``home/runs``."""
    names = {
        "task": "evaluate",
        "dataset": "mnist5k",
        "model": "smallcnn",
        "attack": "pgd",
        "defense": "none",
        "norm": "linf",
        "epsilon": 0.3,
        "access": "whitebox",
        "model_source": "zoo:smallcnn",
        "weights_hash": None,
    }
    names.update(overrides.pop("names", {}))
    metrics = {"n_examples": 4, "clean_accuracy": 1.0, "robust_accuracy": 0.5, "success_rate": 0.5}
    metrics.update(overrides.pop("metrics", {}))
    run_dir = home / "runs" / "2024-01-01" / run_id
    record = {
        "schema": 1,
        "run_id": run_id,
        "status": "finished",
        "error": None,
        "created": "2024-01-01T00:00:00+00:00",
        "duration_s": 1.5,
        "config": {"attack": {"name": names["attack"]}, "seed": 0},
        "config_hash": "h-" + run_id,
        "seed": 0,
        "versions": {"advsuite": "0.1.0", "torch": "2.4.0"},
        "git_commit": None,
        "names": names,
        "metrics": metrics,
        "per_sample": {"index": [0, 1, 2, 3], "success": [True, False, True, False]},
        "artifacts": {"plot": None, "grid": None},
        "run_dir": str(run_dir),
    }
    record.update(overrides)
    return record


def save(store: ResultsStore, record: dict[str, Any]) -> Path:
    path = write_record(record["run_dir"], record)
    store.index(record)
    return path


# -- record.json ------------------------------------------------------------------------------


def test_write_record_round_trip_without_temp_files(tmp_path: Path) -> None:
    record = make_record(tmp_path, "r1", metrics={"median_l2": math.nan, "mean_l2": math.inf})
    path = write_record(tmp_path / "run", record)
    assert path == tmp_path / "run" / "record.json"
    assert os.listdir(tmp_path / "run") == ["record.json"]
    back = read_record(tmp_path / "run")  # a run directory works as well as the file
    assert back["metrics"]["median_l2"] is None and back["metrics"]["mean_l2"] is None  # JSON has no NaN/inf
    assert back["metrics"]["robust_accuracy"] == 0.5
    assert back["per_sample"] == record["per_sample"]
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_failed_write_keeps_the_previous_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    write_record(run, make_record(tmp_path, "old"))

    def broken_fsync(fd: int) -> None:  # the data is half-way to disk when the machine "dies"
        raise OSError("disk full")

    monkeypatch.setattr(record_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_record(run, make_record(tmp_path, "new"))
    monkeypatch.undo()

    def broken_dumps(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("serialiser crashed")

    monkeypatch.setattr(record_module.json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError):
        write_record(run, make_record(tmp_path, "new"))
    monkeypatch.undo()

    with pytest.raises(TypeError, match="cannot store"):
        write_record(run, {**make_record(tmp_path, "new"), "oops": object()})
    assert read_record(run)["run_id"] == "old"
    assert os.listdir(run) == ["record.json"]


def test_records_accept_tensors_and_paths(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    record = make_record(tmp_path, "t", per_sample={"l2": torch.tensor([0.5, float("nan")])}, where=tmp_path)
    back = read_record(write_record(tmp_path / "run", record))
    assert back["per_sample"]["l2"] == [0.5, None]
    assert back["where"] == str(tmp_path)


def test_budget_metrics_are_json_safe_and_bytes_write_atomically(tmp_path: Path) -> None:
    metrics = {"median_mse_at": {"1000": math.inf, "2000": 1e-3}, "success_rate_l2_at": None}
    per_sample = {"index": [0, 1], "mse_at": {"1000": [math.inf, 2e-3], "2000": None}}
    record = make_record(tmp_path, "q", metrics=metrics, per_sample=per_sample)
    store = ResultsStore(tmp_path)
    save(store, record)
    back = read_record(record["run_dir"])
    assert back["metrics"]["median_mse_at"] == {"1000": None, "2000": 1e-3}  # inf -> null
    assert back["per_sample"]["mse_at"] == {"1000": [None, 2e-3], "2000": None}
    assert store.records()[0]["metrics"]["median_mse_at"]["2000"] == 1e-3

    path = record_module.atomic_write_bytes(tmp_path / "b" / "blob.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(path.parent) == ["blob.bin"]


def test_config_hash_ignores_key_order_and_ignored_keys() -> None:
    config = {"attack": {"name": "pgd", "steps": 10, "eps": 0.3}, "seed": 0, "task": {"name": "evaluate"}}
    reordered = {"task": {"name": "evaluate"}, "seed": 0, "attack": {"eps": 0.3, "steps": 10, "name": "pgd"}}
    noisy = {
        **reordered,
        "paths": {"home": "/elsewhere"},
        "redo": True,
        "verbose": False,
        "hydra": {"run": {"dir": "${now:%H}"}},
        "task": {"name": "evaluate", "grid_images": 16},
    }
    h = config_hash(config)
    assert len(h) == 64 and int(h, 16) >= 0
    assert config_hash(reordered) == h
    assert config_hash(noisy) == h
    assert config_hash({**config, "seed": 1}) != h
    assert config_hash({**config, "attack": {"name": "pgd", "steps": 20, "eps": 0.3}}) != h
    # the ignored keys are a parameter
    assert config_hash({**config, "seed": 1}, ignore=["seed"]) == config_hash(config, ignore=["seed"])
    assert config_hash(noisy, ignore=()) != h
    # a run without a detector hashes like one recorded before the detector group existed (still skipped)
    assert config_hash({**config, "detector": {"_target_": "advsuite.detectors.no_detector", "name": "none"}}) == h
    assert config_hash({**config, "detector": {"name": "feature_squeezing", "bits": 1}}) != h


def test_config_hash_accepts_omegaconf() -> None:
    from omegaconf import OmegaConf

    plain = {"attack": {"name": "pgd", "eps": 0.3}, "seed": 0}
    cfg = OmegaConf.create({**plain, "paths": {"home": "${oc.env:NO_SUCH_VARIABLE_ANYWHERE}"}})
    assert config_hash(cfg) == config_hash(plain)


def test_package_versions_and_git_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = package_versions()
    assert {"advsuite", "torch", "torchvision", "foolbox", "timm", "python"} <= set(versions)
    python = versions["python"]
    assert versions["torch"] and python is not None and python.count(".") == 2
    assert package_versions(["surely-not-an-installed-package"])["surely-not-an-installed-package"] is None
    assert git_commit(tmp_path) is None  # not a repository
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
            cwd=tmp_path,
            check=True,
        )
        commit = git_commit(tmp_path)
        assert commit is not None and len(commit) == 40
    monkeypatch.setenv("PATH", "")  # git missing
    assert git_commit(tmp_path) is None


# -- the index --------------------------------------------------------------------------------


def test_index_finished_and_filters(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    save(store, make_record(tmp_path, "a", config_hash="H1", created="2024-01-01T10:00:00+00:00"))
    save(store, make_record(tmp_path, "b", config_hash="H1", created="2024-01-02T10:00:00+00:00"))
    # a later run with the same hash that failed does not count as finished
    save(store, make_record(tmp_path, "c", config_hash="H1", created="2024-01-03T10:00:00+00:00", status="failed"))
    save(store, make_record(tmp_path, "d", names={"norm": "l2", "epsilon": 1.5}))
    save(store, make_record(tmp_path, "e", names={"dataset": "cifar10"}))
    assert store.path == tmp_path / "results.sqlite" and len(store) == 5

    latest = store.finished("H1")
    assert latest is not None and latest["run_id"] == "b"
    assert latest["record_path"] == str((tmp_path / "runs/2024-01-01/b/record.json").resolve())
    assert latest["dataset"] == "mnist5k" and latest["robust_accuracy"] == 0.5 and "record_json" not in latest
    assert store.finished("nope") is None

    # deleting the run directory makes the configuration "not finished" again (falls back to "a")
    shutil.rmtree(tmp_path / "runs/2024-01-01/b")
    latest = store.finished("H1")
    assert latest is not None and latest["run_id"] == "a"

    ids = lambda records: sorted(r["run_id"] for r in records)  # noqa: E731
    # the record file is the truth: a deleted run is no longer listed either
    assert ids(store.records()) == ["a", "d", "e"]
    assert ids(store.records(dataset="mnist5k")) == ["a", "d"]
    assert ids(store.records(dataset="mnist5k", norm="l2")) == ["d"]
    assert ids(store.records(status="failed")) == ["c"]
    assert ids(store.records(status=None)) == ["a", "c", "d", "e"]
    assert store.records(norm="l2")[0]["per_sample"]["index"] == [0, 1, 2, 3]  # the full record


def test_index_upserts_by_run_id(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    save(store, make_record(tmp_path, "a", status="failed", error="boom"))
    save(store, make_record(tmp_path, "a"))
    assert len(store) == 1
    assert store.records()[0]["status"] == "finished"


def rows(store: ResultsStore) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(store.path) as conn:
        return conn.execute(
            "SELECT run_id, status, config_hash, dataset, attack, norm, epsilon, robust_accuracy, "
            "record_path, record_json FROM runs ORDER BY run_id"
        ).fetchall()


def test_rebuild_reproduces_the_index_and_skips_corrupt_records(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    save(store, make_record(tmp_path, "a"))
    save(store, make_record(tmp_path, "b", names={"attack": "qeba"}, metrics={"robust_accuracy": None}))
    # sweeps write under multirun/, possibly several levels deep
    record = make_record(tmp_path, "c", run_dir=str(tmp_path / "multirun/2024-01-01/12-00/3"))
    save(store, record)
    before = rows(store)

    store.path.unlink()
    corrupt = tmp_path / "runs/2024-01-02/broken"
    corrupt.mkdir(parents=True)
    (corrupt / "record.json").write_text('{"run_id": "x", "status": ')  # killed half-way, by a non-atomic tool
    (tmp_path / "runs/2024-01-02/no_id").mkdir()
    (tmp_path / "runs/2024-01-02/no_id/record.json").write_text("{}")

    fresh = ResultsStore(tmp_path)
    with pytest.warns(RuntimeWarning, match="skipping run record") as caught:
        assert fresh.rebuild() == 3
    assert len(caught) == 2
    assert rows(fresh) == before
    # rebuild replaces, it does not add: a second rebuild gives the same rows
    with pytest.warns(RuntimeWarning):
        assert fresh.rebuild(tmp_path / "runs") == 2
    assert [r[0] for r in rows(fresh)] == ["a", "b"]


def test_stale_index_version_is_rebuilt_from_records(tmp_path: Path) -> None:
    import sqlite3

    store = ResultsStore(tmp_path)
    save(store, make_record(tmp_path, "a"))
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM runs")
        conn.execute("PRAGMA user_version = 999")  # as if written by another advsuite version
    assert [r["run_id"] for r in ResultsStore(tmp_path).records()] == ["a"]


def test_concurrent_writers(tmp_path: Path) -> None:
    """Parallel sweep jobs index at the same time; no write may be lost or fail on a lock."""
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            store = ResultsStore(tmp_path)  # each job has its own store, like separate processes
            for i in range(10):
                record = make_record(tmp_path, f"w{k}-{i}")
                write_record(record["run_dir"], record)
                store.index(record)
                store.finished(record["config_hash"])
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ResultsStore(tmp_path)) == 60


def test_record_json_is_plain_json(tmp_path: Path) -> None:
    path = write_record(tmp_path, {"run_id": "x", "value": 1.0})
    assert json.loads(path.read_text()) == {"run_id": "x", "value": 1.0}


# -- damaged files: a corrupt index is rebuilt, a damaged record is not "finished" ----------------


@pytest.mark.parametrize("damage", [b"this is not a database" * 100, b""])
def test_a_corrupt_index_is_set_aside_and_rebuilt_from_the_records(tmp_path: Path, damage: bytes) -> None:
    store = ResultsStore(tmp_path)
    for run_id in ("a", "b"):
        save(store, make_record(tmp_path, run_id, config_hash=f"H{run_id}"))
    store.path.write_bytes(damage + b"\0" * 4096 if damage else b"SQLite format 3\0" + b"\xff" * 4000)
    fresh = ResultsStore(tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert fresh.finished("Ha") is not None  # the run, found again in the rebuilt index
    assert len(fresh) == 2
    (aside,) = tmp_path.glob("results.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(damage[:16] if damage else b"SQLite format 3")
    # the documented repair works too, on an index that breaks again
    fresh.path.write_bytes(b"garbage" * 1000)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert ResultsStore(tmp_path).rebuild() == 2


def test_a_damaged_record_is_not_finished_and_is_left_out_of_listings(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    whole = save(store, make_record(tmp_path, "a", config_hash="H1", created="2024-01-01T10:00:00+00:00"))
    cut = save(store, make_record(tmp_path, "b", config_hash="H1", created="2024-01-02T10:00:00+00:00"))
    cut.write_text(cut.read_text()[:200])  # a torn write by another tool, or a full disk
    with pytest.warns(RuntimeWarning, match="unreadable"):
        latest = store.finished("H1")
    assert latest is not None and latest["run_id"] == "a"  # falls back to the whole one
    whole.write_text(json.dumps({"run_id": "a", "status": "finished"}))  # whole JSON, but no metrics
    with pytest.warns(RuntimeWarning) as caught:
        assert store.finished("H1") is None  # so the configuration runs again
    assert any("incomplete: it says finished but its 'names' is missing" in str(w.message) for w in caught)
    with pytest.warns(RuntimeWarning):
        assert store.records() == []  # and the leaderboard shows neither


def test_traces_are_byte_identical_across_processes(tmp_path: Path) -> None:
    """safetensors keeps metadata in a hash map; its order used to change from one process to the next."""
    script = (
        "import sys, torch; from advsuite.results.traces import write_traces; "
        "write_traces(sys.argv[1], [torch.tensor([[1.0, 2.0], [3.0, 0.5]])], [4], n_dims=784)"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for file in files:
        subprocess.run([sys.executable, "-c", script, str(file)], check=True, timeout=120)
    assert len({f.read_bytes() for f in files}) == 1
