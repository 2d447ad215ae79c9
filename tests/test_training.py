"""The training recipe, augmentation, determinism and ``task=train`` (CPU, tiny budgets)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from advsuite.data import DataBundle
from advsuite.errors import ConfigError
from advsuite.models import build_classifier, weights_hash
from advsuite.training import Recipe, augment_batch, augmentation_plan, lr_factor, train_classifier

TINY = {"epochs": 1, "train_subset": 128, "test_subset": 64, "batch_size": 32}  # 4 steps
LEARN = {"epochs": 2, "train_subset": 512, "test_subset": 200, "batch_size": 32}  # 32 steps
ROOT = Path(__file__).resolve().parents[1]


def test_recipe_defaults_match_the_standard_config() -> None:
    standard = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "train" / "standard.yaml"))
    assert isinstance(standard, dict)
    recipe = Recipe.coerce(standard)  # name/force are control keys, not recipe keys
    assert recipe == Recipe()


def test_recipe_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="valid keys"):
        Recipe.coerce({"epoch": 3})
    with pytest.raises(ConfigError, match="optimizer"):
        Recipe.coerce({"optimizer": "lbfgs"})
    assert Recipe.coerce({"epochs": 3}, {"epochs": 5}).epochs == 5  # overrides win
    assert Recipe().digest() == Recipe.coerce({"name": "x", "force": True}).digest()
    assert Recipe().digest() != Recipe(lr=0.1).digest()


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_augmentation_plan_never_flips_digits() -> None:
    assert augmentation_plan(Recipe(), (1, 28, 28)) == (2, False)
    assert augmentation_plan(Recipe(), (3, 32, 32)) == (4, True)
    assert augmentation_plan(Recipe(augment="none"), (3, 32, 32)) == (0, False)
    assert augmentation_plan(Recipe(crop_padding=3, augment="crop"), (3, 32, 32)) == (3, False)


def test_augment_batch_shifts_and_flips() -> None:
    x = torch.rand(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, 2, False, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # each image is a shifted copy: its centre 4x4 appears somewhere in the padded original
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        found = any(torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5))
        assert found
    assert not torch.equal(out, x)
    flipped = augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], x[i].flip(2)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and 10 < sum(mirrored) < 54
    again = augment_batch(x, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(again, augment_batch(x, 2, True, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("arch", ["smallcnn", "cifarcnn"])
def test_training_is_deterministic_for_a_seed(mnist: DataBundle, arch: str) -> None:
    hashes, metrics = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier(arch, mnist)
        metrics.append(train_classifier(model, mnist, TINY, device="cpu", seed=3, verbose=False))
        hashes.append(weights_hash(model))
        assert not model.training
    assert hashes[0] == hashes[1]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    torch.manual_seed(0)
    other = build_classifier(arch, mnist)
    train_classifier(other, mnist, TINY, device="cpu", seed=4, verbose=False)
    assert weights_hash(other) != hashes[0]


def test_training_learns_and_reports_metrics(mnist: DataBundle) -> None:
    torch.manual_seed(0)
    model = build_classifier("smallcnn", mnist)
    recipe = {**LEARN, "warmup_epochs": 1, "label_smoothing": 0.1}
    out = train_classifier(model, mnist, recipe, device="cpu", seed=0, verbose=False)
    assert out["n_train"] == 512 and out["n_test"] == 200 and out["epochs"] == 2
    assert out["steps"] == 2 * 16
    assert out["test_accuracy"] > 0.6  # chance is 0.1
    assert out["train_seconds"] > 0


def test_adamw_and_predict_restore_mode(mnist: DataBundle) -> None:
    torch.manual_seed(0)
    model = build_classifier("smallcnn", mnist)
    out = train_classifier(model, mnist, {**LEARN, "optimizer": "adamw", "lr": 3e-3}, seed=0, verbose=False)
    assert out["test_accuracy"] > 0.5
    model.train()
    model.predict(torch.rand(3, 1, 28, 28))
    assert model.training  # predict ran in eval mode and restored the previous mode
    model.eval()
    model.predict(torch.rand(3, 1, 28, 28))
    assert not model.training


def test_run_train_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from advsuite.tasks.train import run_train

    root = ROOT / "conf"
    cfg = OmegaConf.create(
        {
            "dataset": {"_target_": "advsuite.data.mnist5k"},
            "model": OmegaConf.load(root / "model" / "smallcnn.yaml"),
            "train": {**OmegaConf.to_container(OmegaConf.load(root / "train" / "standard.yaml")), **TINY},  # type: ignore[dict-item]
            "seed": 0,
            "device": "cpu",
            "verbose": False,
            "paths": {"home": str(tmp_path)},
        }
    )
    first = run_train(cfg)
    assert first["source"] == "trained"
    assert Path(first["weights"]).is_relative_to(tmp_path / "zoo")
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and first["weights"] in printed
    assert run_train(cfg)["source"] == "cache"
    cfg.train.force = True
    assert run_train(cfg)["source"] == "trained"


def test_a_training_says_how_long_it_will_take(mnist: DataBundle, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = build_classifier("smallcnn", mnist)
    train_classifier(model, mnist, {**LEARN, "epochs": 1}, seed=0, verbose=True)
    out = capsys.readouterr()
    (line,) = [line for line in (out.out + out.err).splitlines() if "in all at the first steps' pace" in line]
    assert line.startswith("training smallcnn: 1 epochs x 16 steps on 512 images, about ")
    assert "train.epochs=N, train.train_subset=N" in line
