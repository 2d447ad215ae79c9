"""``task=prior``: build (or load from the cache) a learned probe prior and report where it lives.

Building a prior ahead of a sweep means the attack runs only load it; the ``model`` config is the victim
whose architecture the reference models must avoid (``references: auto`` skips it, an explicit list that
contains it is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from advsuite.attacks.boundary.priors.base import probe_spread
from advsuite.attacks.boundary.priors.store import load_prior
from advsuite.data.bundle import DataBundle
from advsuite.errors import ConfigError
from advsuite.paths import advsuite_home

#: a prior whose probes have an effective dimension below this, and below a tenth of the number of directions
#: they touch at all, has collapsed onto a few of them (a GAN failure mode)
COLLAPSED_DIM = 10


def summarize(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of a prior's metadata worth printing (the rest is in its ``meta.json``)."""
    metrics = dict(info.get("metrics") or {})
    return {
        "kind": info["kind"],
        "dataset": info["dataset"]["name"],
        "source": info["source"],
        "path": info["path"],
        "config": info["config"],
        "references": [
            {k: ref.get(k) for k in ("reference", "arch", "clean_accuracy", "weights_hash", "n_gradients")}
            for ref in info["references"]
        ],
        "n_gradients": info["n_gradients"],
        "seed": info["seed"],
        "weights_hash": info["weights_hash"],
        "created": info["created"],
        "metrics": metrics,
    }


def _format(summary: dict[str, Any]) -> str:
    metrics, spread = summary["metrics"], summary["probe_spread"]
    refs = ", ".join(
        f"{r['reference'] if isinstance(r['reference'], str) else r['arch']} "
        f"({r['clean_accuracy']:.2%}, {r['n_gradients']} gradients)"
        if isinstance(r.get("clean_accuracy"), float)
        else str(r["reference"])
        for r in summary["references"]
    )
    timing = ""
    if summary["source"] == "trained":
        timing = (
            f"\nbuilt in {metrics['total_seconds']:.0f} s (references {metrics['reference_seconds']:.0f} s, "
            f"gradients {metrics['gradient_seconds']:.0f} s, fit {metrics['fit_seconds']:.0f} s)"
        )
    config = ", ".join(f"{k}={v}" for k, v in summary["config"].items() if k != "input_shape")
    collapsed = (
        f"\nWARNING: the probes explore fewer than {COLLAPSED_DIM} directions (a collapsed generator); attacks "
        "driven by this prior will stall early. Train it longer (prior.epochs / prior.epochs_per_scale)."
        if spread["effective_dim"] < min(COLLAPSED_DIM, spread["rank"] / 10)
        else ""
    )
    return (
        f"{summary['kind']} prior on {summary['dataset']} ({summary['source']}): {config}\n"
        f"learned from {summary['n_gradients']} gradients of {refs}{timing}\n"
        f"probe spread: effective dimension {spread['effective_dim']:.0f}, {spread['rank']} directions hold 99.9% "
        f"of the energy ({spread['samples']} samples){collapsed}\n"
        f"cached at {summary['path']} (sha256 {summary['weights_hash']}, created {summary['created']})"
    )


def run_prior(cfg: DictConfig) -> dict[str, Any]:
    """Resolve ``cfg.prior`` for ``cfg.dataset`` (victim ``cfg.model.arch``); print and return its summary.

    ``task.force=true`` rebuilds the prior even when it is cached (the reference models stay cached).
    """
    if cfg.get("prior") is None:
        raise ConfigError("task=prior needs a prior config: add prior=pca (or ae, vae, gan, pgan)")
    data = instantiate(cfg.dataset)
    if not isinstance(data, DataBundle):
        raise ConfigError(f"dataset config must instantiate a DataBundle, got {type(data).__name__}")
    home = advsuite_home(cfg.get("paths", {}).get("home"))
    victim = cfg.get("model", {}).get("arch")
    prior = load_prior(
        cfg.prior,
        data,
        device=cfg.get("device", "auto"),
        cache_dir=Path(home) / "zoo",
        seed=int(cfg.get("seed", 0)),
        verbose=bool(cfg.get("verbose", True)),
        victim_arch=str(victim) if victim else None,
        force=bool(cfg.task.get("force", False)),
    )
    summary = summarize(prior.info)
    summary["probe_spread"] = probe_spread(prior, seed=int(cfg.get("seed", 0)))
    print(_format(summary))
    return summary
