"""``task=train``: train the configured model on the configured dataset (or load it from the zoo cache)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advsuite.data.bundle import DataBundle
from advsuite.errors import ConfigError
from advsuite.models.zoo import load_model


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Resolve ``cfg.model`` on ``cfg.dataset`` with the ``cfg.train`` recipe; print and return its provenance.

    ``train.force=true`` retrains even when the zoo cache holds the model (the entry is replaced).
    """
    data = instantiate(cfg.dataset)
    if not isinstance(data, DataBundle):
        raise ConfigError(f"dataset config must instantiate a DataBundle, got {type(data).__name__}")
    recipe: dict[str, Any] = dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    force = bool(recipe.pop("force", False))
    home = cfg.get("paths", {}).get("home")
    model = load_model(
        cfg.model,
        data,
        recipe=recipe,
        device=cfg.get("device", "auto"),
        cache_dir=Path(home) / "zoo" if home else None,
        seed=int(cfg.get("seed", 0)),
        verbose=bool(cfg.get("verbose", True)),
        force_train=force,
    )
    info = model.info
    summary = {
        "arch": info["arch"],
        "name": info["name"],
        "dataset": info["dataset"],
        "source": info["source"],
        "clean_accuracy": info["clean_accuracy"],
        "clean_accuracy_n": info.get("clean_accuracy_n"),
        "train_seconds": info.get("train_seconds"),
        "weights": info["path"],
        "weights_hash": info["weights_hash"],
        "cache_key": info.get("cache_key"),
        "adaptation": info["adaptation"],
        "seed": info["seed"],
    }
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return summary
    seconds = summary["train_seconds"]
    trained = f", trained in {seconds:.0f} s" if summary["source"] == "trained" and seconds else ""
    print(
        f"{summary['name']} on {summary['dataset']}: clean accuracy {summary['clean_accuracy']:.2%} "
        f"({summary['clean_accuracy_n']} test images; source: {summary['source']}{trained})\n"
        f"weights: {summary['weights']} (sha256 {summary['weights_hash']})"
    )
    return summary
