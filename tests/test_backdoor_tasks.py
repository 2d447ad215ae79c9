"""The backdoor tasks end to end, in process: task=backdoor (poison, train, cache, record), task=backdoor_defense
(each defense kind, DER, detection metrics), task=backdoor_identify (influence), and their refusals.

One BadNets run (smallcnn, 4,000 MNIST images, 4 epochs) is shared by the module; its numbers are asserted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from advsuite.errors import ConfigError
from advsuite.tasks import run_task

RECIPE = ("train.epochs=4", "task.n_test=500")


def run(*overrides: str) -> dict[str, Any]:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["verbose=false", "dataset=mnist5k", "model=smallcnn",
                                                       *overrides])  # fmt: skip
    record = run_task(cfg)
    assert isinstance(record, dict)
    return record


@pytest.fixture(scope="module")
def badnets() -> dict[str, Any]:
    return run("task=backdoor", "attack=badnets", *RECIPE)


def test_badnets_implants_a_backdoor_at_the_clean_models_accuracy(badnets: dict[str, Any]) -> None:
    m = badnets["metrics"]
    assert badnets["status"] == "finished" and badnets["names"]["task"] == "backdoor"
    assert m["asr"] >= 0.9 and m["ra"] <= 0.1
    assert abs(m["ca_drop"]) <= 0.03 and m["clean_accuracy"] >= 0.85
    assert m["n_poisoned"] == 400 and m["n_train"] == 4000 and m["n_backdoor_test"] < m["n_test"] == 500
    run_dir = Path(badnets["run_dir"])
    indices = json.loads((run_dir / "poison_indices.json").read_text())
    assert len(indices) == 400 == len(set(indices))
    assert (run_dir / "triggers.png").is_file()


def test_the_label_consistent_attack_implants_without_changing_a_label(badnets: dict[str, Any]) -> None:
    record = run("task=backdoor", "attack=lc", *RECIPE)  # the clean model of the same recipe is cached already
    m = record["metrics"]
    assert record["names"]["attack"] == "lc" and m["clean_label"] is True
    assert m["asr"] >= 0.6 and m["clean_model_asr"] <= 0.1  # measured 0.82 and 0.00
    assert m["clean_accuracy"] >= 0.8  # the whole target class is perturbed at 10%: measured 0.89 (clean 0.97)


def test_a_second_run_loads_the_cached_poisoned_model(badnets: dict[str, Any]) -> None:
    again = run("task=backdoor", "attack=badnets", *RECIPE, "redo=true")
    assert again["metrics"]["model_source"] == "cache"
    for key in ("clean_accuracy", "asr", "ra"):
        assert again["metrics"][key] == badnets["metrics"][key]


def test_a_killed_poisoned_training_is_never_used_and_the_next_run_retrains(monkeypatch: pytest.MonkeyPatch) -> None:
    import advsuite.attacks.backdoor.experiment as experiment

    real = experiment.train_classifier

    def killed(*args: Any, on_epoch: Callable[..., None], **kwargs: Any) -> Any:
        def stop(epoch: int, *rest: Any) -> None:
            on_epoch(epoch, *rest)
            if epoch == 1:
                raise KeyboardInterrupt  # as a Ctrl-C or a kill between epochs

        return real(*args, on_epoch=stop, **kwargs)

    overrides = ("task=backdoor", "attack=badnets", "attack.size=4", "task.clean_reference=false", "train.epochs=2",
                 "task.n_test=100")  # fmt: skip
    monkeypatch.setattr(experiment, "train_classifier", killed)
    with pytest.raises(KeyboardInterrupt):
        run(*overrides)
    monkeypatch.setattr(experiment, "train_classifier", real)
    record = run(*overrides)
    assert record["metrics"]["model_source"] == "trained"
    entry = Path(record["backdoor"]["entry"])
    (entry / "meta.json").unlink()  # a run killed while storing: the weights are there, the commit marker is not
    with pytest.warns(UserWarning, match="no meta.json.*rebuilding it"):
        again = run(*overrides, "redo=true")
    assert again["metrics"]["model_source"] == "trained" and again["metrics"]["asr"] == record["metrics"]["asr"]


@pytest.mark.parametrize(
    ("defense", "check"),
    [
        ("fine_pruning", lambda m: m["defense_pruned_units"] > 0 and m["clean_accuracy"] >= 0.8),
        ("strip", lambda m: m["asr"] <= 0.1 and m["detection_auroc"] >= 0.95 and m["der"] >= 0.9),
        ("spectral", lambda m: m["detection_auroc"] >= 0.6 and m["removed"] > 0 and m["removed_poison_recall"] >= 0),
        ("fine_tuning", lambda m: m["defense_fine_tune_images"] == 200 and m["clean_accuracy"] >= 0.85),
        ("activation_clustering", lambda m: "detection_auroc" in m and m["clean_accuracy"] >= 0.8),
    ],
)
def test_backdoor_defenses_record_before_after_and_detection(
    badnets: dict[str, Any], defense: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    record = run("task=backdoor_defense", f"backdoor={badnets['run_id']}", f"defense={defense}", *RECIPE[1:])
    m = record["metrics"]
    assert record["names"]["attack"] == "badnets" and record["names"]["defense"] == defense
    assert record["backdoor"]["attack_run"] == badnets["run_id"]
    assert m["before_asr"] == pytest.approx(badnets["metrics"]["asr"])
    assert 0 <= m["der"] <= 1
    assert check(m), m


def test_neural_cleanse_as_a_defense_finds_the_smallest_trigger_at_the_target(badnets: dict[str, Any]) -> None:
    record = run("task=backdoor_defense", "backdoor=badnets", "defense=neural_cleanse", "defense.steps=40", RECIPE[0],
                 *RECIPE[1:])  # fmt: skip
    m = record["metrics"]
    masks = m["defense_mask_l1"]
    assert len(masks) == 10 and masks.index(min(masks)) == 0  # the attack's target
    assert m["target_anomaly_index"] == max(m["defense_anomaly_index"])


def test_influence_over_checkpoints_finds_the_poison(badnets: dict[str, Any]) -> None:
    record = run("task=backdoor_identify", f"backdoor={badnets['names']['backdoor_key']}", "task.n_queries=2",
                 "task.params=head")  # fmt: skip
    m = record["metrics"]
    assert m["checkpoints"] == 4 and m["n_poison"] == 400 and m["n_candidates"] == 10
    for method in ("gas", "tracin"):  # the head's gradients: well above a random ranking's 0.10
        assert m[f"{method}_auprc"] > 3 * m["random_auprc"]  # measured 0.50 (gas) and 0.92 (tracin)
        assert m[f"{method}_precision_at_poison_count"] > 3 * m["random_auprc"]
        assert 1 <= m[f"{method}_target_rank"] <= 11
    assert m["representer_auprc"] > m["random_auprc"]


def test_the_leaderboard_renders_the_attack_by_defense_grid(badnets: dict[str, Any], tmp_path: Path) -> None:
    result = run("task=leaderboard", f"task.out_dir={tmp_path}", "task.plot=false")
    grid = next(g for g in result["backdoor_grids"] if g.dataset == "mnist5k")
    assert "badnets" in grid.attacks and grid.defenses[0] == "none" and "strip" in grid.defenses
    m = badnets["metrics"]
    text = (tmp_path / "backdoor_grid.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| badnets |"))
    assert row.split(" | ")[1] == f"{100 * m['clean_accuracy']:.1f} / {100 * m['asr']:.1f} / {100 * m['ra']:.1f}"
    assert (tmp_path / "backdoor_grid.csv").read_text().count("badnets") >= 4


def test_defense_runs_refuse_what_is_not_a_backdoor_record(tmp_path: Path) -> None:
    fake = tmp_path / "record.json"
    fake.write_text(json.dumps({"run_id": "x", "status": "finished", "run_dir": str(tmp_path),
                                "names": {"task": "evaluate", "attack": "pgd", "model": "smallcnn"}}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"is a task=evaluate record .*not a backdoor record"):
        run("task=backdoor_defense", f"backdoor={fake}", "defense=strip")
    with pytest.raises(ConfigError, match="no such record"):
        run("task=backdoor_defense", "backdoor=nothing_like_it", "defense=strip")
    with pytest.raises(ConfigError, match="needs backdoor="):
        run("task=backdoor_identify")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("task=backdoor", "attack=badnets", "attack.rate=1.5"), r"rate must be in \(0, 1\)"),
        (("task=backdoor", "attack=badnets", "attack.target=10"), "target=10 is not a class"),
        (("task=backdoor", "attack=badnets", "attack.size=40"), "does not fit a 28×28 image"),
        (("task=backdoor", "attack=pgd"), "not a poisoning attack"),
        (("task=evaluate", "attack=badnets"), "is a poisoning .*task=backdoor"),
        (("task=evaluate", "defense=strip"), "is a backdoor defense: run it with task=backdoor_defense"),
        (("task=backdoor_defense", "backdoor=badnets", "defense=jpeg"), "not a backdoor defense"),
        (("task=backdoor_identify", "backdoor=badnets", "task.methods=[influence]"), "task.methods must be"),
    ],
)
def test_bad_options_get_one_line_before_anything_trains(
    overrides: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADVSUITE_HOME", str(tmp_path))  # refused runs' records stay out of the shared home
    with pytest.raises(ConfigError, match=message):
        run(*overrides)
