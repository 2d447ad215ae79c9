"""Recording a run: the record (written whatever happens), its artifacts and the printed summary.

Used by the tasks (:func:`open_recorder`) and by :func:`advsuite.api.evaluate_and_record`, so the CLI and the
Python API write the same records into the same store.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from advsuite.attack import Attack, FixedEpsilonAttack
from advsuite.evaluation import Evaluation
from advsuite.models.classifier import Classifier
from advsuite.plots import plot_distortion_vs_queries, plot_robust_accuracy, save_image_grid
from advsuite.results import ResultsStore, config_hash, git_commit, package_versions, write_record
from advsuite.results.traces import TRACES_NAME, write_traces


def new_run_dir(home: Path) -> Path:
    return home / "runs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")


def run_names(
    *,
    dataset: str,
    model_name: str,
    attack_name: str,
    attack: Attack | None,
    model: Classifier | None,
    defense: str,
    detector: str = "none",
) -> dict[str, Any]:
    """The ``names`` block of a record: what was attacked, how, and under which threat model."""
    eps = max(attack.epsilons) if isinstance(attack, FixedEpsilonAttack) else None
    info = model.info if model is not None else {}
    return {
        "task": "evaluate",
        "dataset": dataset,
        "model": model_name,
        "attack": attack_name,
        "defense": defense,
        "detector": detector,
        "norm": attack.norm if attack is not None else None,
        "epsilon": eps,
        "access": attack.access if attack is not None else None,
        "targeted": attack.targeted if attack is not None else None,
        "model_source": info.get("model_source", model_name),
        "weights_hash": info.get("weights_hash"),
    }


def write_artifacts(run_dir: Path, ev: Evaluation, attack_name: str, grid_images: int = 8) -> dict[str, str | None]:
    """Plots, an image grid and (query attacks) the traces, next to the record; names relative to it.

    Fixed-epsilon attacks get ``robust_accuracy.png``; query attacks ``distortion_vs_queries.png``
    (median and interquartile band of per-pixel MSE over the attacked images, log scale, with the
    success threshold) and ``traces.safetensors`` (:mod:`advsuite.results.traces`), named in
    ``artifacts.traces``. That key is only present when the attack returned traces.
    """
    artifacts: dict[str, str | None] = {"plot": None, "grid": None}
    n_dims = int(ev.x[0].numel()) if len(ev.x) else None
    traced = ev.traced or any(len(t) for t in ev.traces)
    if ev.epsilons is not None and ev.robust_by_eps is not None:
        plot_robust_accuracy(ev.epsilons, ev.robust_by_eps, run_dir / "robust_accuracy.png", title=attack_name)
        artifacts["plot"] = "robust_accuracy.png"
    elif any(len(t) for t in ev.traces):
        threshold = ev.metrics.get("mse_threshold")
        plot_distortion_vs_queries(
            {attack_name: ev.traces},
            run_dir / "distortion_vs_queries.png",
            metric="mse",
            n_dims=n_dims,
            title=attack_name,
            threshold=float(threshold) if isinstance(threshold, int | float) else None,
            empty_as_inf=True,
        )
        artifacts["plot"] = "distortion_vs_queries.png"
    if traced:
        index = ev.attacked.nonzero().squeeze(1).tolist()
        write_traces(run_dir / TRACES_NAME, ev.traces, index, n_dims=n_dims)
        artifacts["traces"] = TRACES_NAME
    shown = ev.attacked.nonzero().squeeze(1)[:grid_images]
    if len(shown):
        save_image_grid(ev.x[shown], ev.x_adv[shown], run_dir / "examples.png", n=grid_images)
        artifacts["grid"] = "examples.png"
    return artifacts


def format_summary(names: dict[str, Any], metrics: dict[str, Any], titles: Mapping[str, str] | None = None) -> str:
    """The printed table of a run; ``titles`` (the attack's leaderboard metrics) adds the attack's own rows."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [
        ("dataset / model", f"{names['dataset']} / {names['model']}"),
        ("defense", str(names.get("defense") or "none")),
        *([("detector", str(names["detector"]))] if names.get("detector", "none") != "none" else []),
        ("attack", f"{names['attack']} ({names['access']}, {names['norm']})"),
        ("examples (attacked)", f"{metrics['n_examples']} ({metrics['n_attacked']})"),
        ("clean accuracy", fmt(metrics["clean_accuracy"])),
        ("robust accuracy", fmt(metrics["robust_accuracy"])),
        ("success rate", fmt(metrics["success_rate"])),
        ("median / mean L2", f"{fmt(metrics['median_l2'])} / {fmt(metrics['mean_l2'])}"),
        ("median / mean Linf", f"{fmt(metrics['median_linf'])} / {fmt(metrics['mean_linf'])}"),
        ("median / mean queries", f"{fmt(metrics['median_queries'])} / {fmt(metrics['mean_queries'])}"),
        ("flips on re-check", fmt(metrics["flips"])),
    ]
    if metrics.get("robust_accuracy_by_eps"):
        curve = ", ".join(f"{e}: {a:.3f}" for e, a in metrics["robust_accuracy_by_eps"].items())
        rows.insert(5, ("robust acc. by eps", curve))
    if isinstance(metrics.get("median_mse_at"), dict):

        def by_budget(values: dict[str, Any]) -> str:
            return ", ".join(f"{b}: {fmt(v)}" for b, v in values.items())

        rows.append(("median MSE @ queries", by_budget(metrics["median_mse_at"])))
        rows.append(("median L2 @ queries", by_budget(metrics["median_l2_at"] or {})))
        if isinstance(metrics.get("success_rate_at"), dict):
            rows.append((f"success (MSE <= {metrics['mse_threshold']:g})", by_budget(metrics["success_rate_at"])))
        if isinstance(metrics.get("success_rate_l2_at"), dict):
            rows.append((f"success (L2 <= {metrics['l2_threshold']:g})", by_budget(metrics["success_rate_l2_at"])))
    if "detector_auroc" in metrics:
        rows.append(
            ("detector AUROC / TPR / FPR", " / ".join(fmt(metrics[f"detector_{k}"]) for k in ("auroc", "tpr", "fpr")))
        )
        rows.append(("undetected success rate", fmt(metrics["undetected_success_rate"])))
    # the attack's leaderboard metrics and their variants, e.g. patch_success@0.1, fooling_rate:resnet18
    rows += [(k, fmt(v)) for k, v in metrics.items() if titles and k.startswith(tuple(titles))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def open_recorder(cfg: DictConfig, home: Path, **identity: Any) -> tuple[RunRecorder, dict[str, Any] | None]:
    """A task's recorder (its config plus ``identity``, e.g. the attack run a defense resolves to, is what makes
    two runs identical) and the finished record of an identical run, unless ``redo``."""
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)) | identity
    hydra_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    recorder = RunRecorder(config, home=home, run_dir=hydra_dir, seed=cfg.get("seed"))
    previous = None if cfg.redo else recorder.previous()
    if previous is not None:
        print(f"skipped: an identical configuration already finished in {previous['run_dir']} (redo=true to rerun)")
    return recorder, previous


class RunRecorder:
    """Context manager around one run: the record is written and indexed however the run ends.

    A run that raises is recorded as ``failed`` with its error (then the exception propagates);
    one that calls :meth:`finish` is recorded as ``finished``.
    """

    def __init__(self, config: dict[str, Any], *, home: Path, run_dir: Path | None = None, seed: int = 0) -> None:
        self.store = ResultsStore(home)
        self.run_dir = run_dir or new_run_dir(home)
        self.started = time.time()
        self.names: dict[str, Any] = {}
        self.record: dict[str, Any] = {
            "schema": 1,
            "run_id": uuid.uuid4().hex,
            "status": "failed",
            "error": None,
            "created": datetime.now(timezone.utc).isoformat(),
            "config": config,
            "config_hash": config_hash(config),
            "seed": seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "run_dir": str(self.run_dir),
        }

    def previous(self) -> dict[str, Any] | None:
        """The finished record of an identical configuration, if one exists."""
        return self.store.finished(self.record["config_hash"])

    def __enter__(self) -> RunRecorder:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self

    def finish(self, ev: Evaluation, artifacts: dict[str, str | None]) -> None:
        self.record.update(
            status="finished",
            names=self.names,
            metrics=ev.metrics,
            metric_titles=ev.metric_titles,
            per_sample={"index": list(range(len(ev.x))), **ev.per_sample},
            artifacts=artifacts,
        )

    def finish_metrics(self, metrics: dict[str, Any], titles: dict[str, str], artifacts: dict[str, str]) -> None:
        """Finish a run that is not one evaluation (e.g. an audit): its metrics and artifacts as they are."""
        self.record.update(status="finished", names=self.names, metrics=metrics, metric_titles=titles,
                           artifacts=artifacts)  # fmt: skip

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.record.update(
                status="failed",
                names=self.names,
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc_type, exc, tb)),
            )
        self.record["duration_s"] = time.time() - self.started
        write_record(self.run_dir, self.record)
        self.store.index(self.record)
