"""Bring your own model: a network defined only here, attacked from Python and from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import advsuite
from advsuite.errors import CheckpointError, ConfigError, ModelError
from advsuite.leaderboard import build_leaderboard
from advsuite.models.checkpoints import save_checkpoint
from advsuite.models.zoo import load_model
from advsuite.results import ResultsStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class TinyNet(nn.Module):
    """Not in the zoo: a user's own MNIST network."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width * 14 * 14, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def make_flat(width: int = 8) -> nn.Module:
    """A factory returning the wrong output shape: (N, C*H*W) instead of (N, classes)."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Flatten())


class Renamed(TinyNet):
    """Same shapes as TinyNet, other parameter names: its checkpoints do not fit."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width)
        self.stem = self.conv
        del self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)).flatten(1))


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaboom")


@pytest.fixture(scope="module")
def trained_tiny(mnist, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = TinyNet(width=8)
    x, y = advsuite.as_tensors(mnist.train)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for batch in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net((x[batch] - 0.1307) / 0.3081), y[batch]).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(net, path)
    return net, path


def spec(**overrides: object) -> dict[str, object]:
    return {"arch": "custom", "target": "test_custom_models:TinyNet", "kwargs": {"width": 8}, **overrides}


@pytest.fixture()
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def test_custom_model_through_the_python_api(trained_tiny, mnist, advsuite_home: Path) -> None:
    net, _ = trained_tiny
    model = advsuite.wrap_model(net, input_shape=(1, 28, 28), num_classes=10, mean=[0.1307], std=[0.3081])
    x, y = advsuite.as_tensors(mnist.test, 40)
    record = advsuite.evaluate_and_record(model, "fgsm", x, y, dataset="mnist5k")
    assert record["status"] == "finished" and record["metrics"]["clean_accuracy"] > 0.8
    assert record["names"]["model_source"] == f"{__name__}.TinyNet"
    records = ResultsStore(advsuite_home).records(dataset="mnist5k")
    assert any(r["run_id"] == record["run_id"] for r in records)
    rows = build_leaderboard(records, dataset="mnist5k")
    assert any(row["model"].startswith(f"{__name__}.TinyNet@") for row in rows)


def test_custom_model_through_the_cli(trained_tiny, advsuite_home: Path) -> None:
    _, checkpoint = trained_tiny
    env = {**os.environ, "ADVSUITE_HOME": str(advsuite_home), "PYTHONPATH": str(HERE)}
    args = ["model=custom", "model.target=test_custom_models:TinyNet", "+model.kwargs.width=8"]
    run = subprocess.run(
        [sys.executable, "-m", "advsuite", *args, f"model.checkpoint={checkpoint}", "attack=fgsm", "n_samples=30"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((Path(run.stdout.split("record: ")[-1].strip())).read_text())
    assert record["names"]["model_source"] == "test_custom_models:TinyNet"
    assert record["names"]["weights_hash"]
    board = subprocess.run(
        [sys.executable, "-m", "advsuite", "task=leaderboard", "task.dataset=mnist5k"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert board.returncode == 0, board.stderr[-2000:]
    assert "test_custom_models:TinyNet" in board.stdout


def test_import_path_that_does_not_resolve_is_named(mnist, importable) -> None:
    with pytest.raises(ConfigError, match="no_such_module"):
        load_model(spec(target="no_such_module:Net"), mnist, device="cpu")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        load_model(spec(target="test_custom_models:Nope"), mnist, device="cpu")


def test_output_shape_is_checked(mnist, importable) -> None:
    with pytest.raises(ModelError, match=r"\(2, 10\), got \(2, 6272\)"):
        load_model(spec(target="test_custom_models:make_flat"), mnist, device="cpu")


def test_checkpoint_keys_must_match(trained_tiny, mnist, importable) -> None:
    _, checkpoint = trained_tiny
    with pytest.raises(CheckpointError, match=r"missing keys \[stem.bias, stem.weight\]; unexpected keys \[conv"):
        load_model(spec(target="test_custom_models:Renamed", checkpoint=str(checkpoint)), mnist, device="cpu")


def test_forward_errors_name_the_model_and_input_shape(mnist, importable) -> None:
    with pytest.raises(ModelError, match=r"raised RuntimeError in forward on input of shape \(2, 1, 28, 28\): kaboom"):
        load_model(spec(target="test_custom_models:Exploding", kwargs={}), mnist, device="cpu")


def test_users_own_yaml_through_the_hydra_search_path(trained_tiny, advsuite_home: Path, tmp_path: Path) -> None:
    _, checkpoint = trained_tiny
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_net.yaml").write_text(
        "arch: custom\ntarget: test_custom_models:TinyNet\nkwargs: {width: 8}\n"
        f"checkpoint: {checkpoint}\nmean: null\nstd: null\nhub: false\nrecipe_overrides: {{}}\n"
    )
    env = {**os.environ, "ADVSUITE_HOME": str(advsuite_home), "PYTHONPATH": str(HERE)}
    args = [f"hydra.searchpath=[file://{tmp_path}]", "model=my_net", "attack=fgsm", "n_samples=10"]
    run = subprocess.run(
        [sys.executable, "-m", "advsuite", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads(Path(run.stdout.split("record: ")[-1].strip()).read_text())
    assert record["names"]["model"] == "my_net"
    assert record["names"]["model_source"] == "test_custom_models:TinyNet"
