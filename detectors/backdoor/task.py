"""``task=backdoor_identify backdoor=<attack run>``: which training samples were the poison, and which class the
attack targeted, from influence over the poisoned model's training checkpoints (:mod:`.identification`).

Queries: triggered test images (of non-target classes) the poisoned model sends to the attack's target label.
Candidates for target identification: one clean, correctly classified test image per class, ranked together with
each query by the anomaly of their influence tails. The record gives each method's poison AUPRC (mean over
queries; a random ranking scores the poison share), its precision among the top ``|poison|`` samples, the
query's rank among the candidates (1: the targeted class is identified) and the seconds per test input.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from advsuite.attacks.backdoor.experiment import BackdoorStage, find_backdoor_record, stage_from_record
from advsuite.attacks.backdoor.task import run_names
from advsuite.data.bundle import sample_tensors
from advsuite.errors import ConfigError
from advsuite.paths import advsuite_home
from advsuite.recording import open_recorder
from advsuite.seeding import seed_everything
from advsuite.validation import check_int

from .identification import METHODS, Checkpoint, average_precision, influence, tail_anomaly


def check_identify_task(task: DictConfig) -> list[str]:
    check_int("task", "n_queries", task.get("n_queries"), 1)
    methods = [str(m) for m in task.get("methods") or []]
    if not methods or set(methods) - set(METHODS):
        raise ConfigError(f"task.methods must be a non-empty list drawn from {list(METHODS)}, got {methods}")
    if task.get("params") not in ("all", "head"):
        raise ConfigError(f"task.params must be 'all' (every weight's gradient) or 'head' (the last layer's), "
                          f"got {task.get('params')!r}")  # fmt: skip
    return methods


@torch.no_grad()
def queries_and_candidates(stage: BackdoorStage, n_queries: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(x, predicted label, number of queries)``: the triggered queries first, then one clean candidate per class."""
    x, y = sample_tensors(stage.data.test, None, seed)
    attack, model = stage.attack, stage.model
    keep = attack.attackable(y)
    triggered = attack.trigger(x[keep])
    wanted = attack.target_labels(y[keep], stage.data.num_classes)
    hit = (model.predict(triggered, 256) == wanted).nonzero().flatten()[:n_queries]
    if len(hit) == 0:
        raise ConfigError("no triggered test image is sent to the target by this model (ASR 0): there is no "
                          "misclassified input to trace back to the poison")  # fmt: skip
    predicted = model.predict(x, 256)
    candidates = [int(((predicted == y) & (y == c)).nonzero().flatten()[0]) for c in range(stage.data.num_classes)
                  if bool(((predicted == y) & (y == c)).any())]  # fmt: skip
    test_x = torch.cat([triggered[hit], x[candidates]])
    test_y = torch.cat([wanted[hit], y[candidates]])
    return test_x, test_y, len(hit)


def run_backdoor_identify(cfg: DictConfig) -> dict[str, Any]:
    home = advsuite_home(cfg.paths.home)
    methods = check_identify_task(cfg.task)  # options and the attack run first, as task=backdoor_defense
    names = run_names(cfg, "unknown", "backdoor_identify", "influence")
    dataset, model = names["dataset"], names["model"]
    attack_record = find_backdoor_record(cfg.get("backdoor"), home, dataset, model, train=cfg.get("train"),
                                         seed=cfg.get("seed"), task="backdoor_identify")  # fmt: skip
    recorder, previous = open_recorder(cfg, home, backdoor_run=attack_record["run_id"])
    if previous is not None:
        return previous
    with recorder:
        found = attack_record["names"]
        recorder.names = {
            **names,
            **{k: found.get(k) for k in ("attack", "dataset", "model", "backdoor_key", "attack_label")},
        }
        seed = int(cfg.seed)
        seed_everything(seed)
        stage = stage_from_record(attack_record, str(home), verbose=bool(cfg.verbose))
        checkpoints = [Checkpoint(s.state, s.lr) for s in stage.snapshots]
        test_x, test_y, n_queries = queries_and_candidates(stage, int(cfg.task.n_queries), seed)
        scores, seconds = influence(stage.model, checkpoints, stage.poisoned.x, stage.poisoned.y, test_x, test_y,
                                    methods=methods, params=str(cfg.task.params))  # fmt: skip
        poison = torch.zeros(len(stage.poisoned.y), dtype=torch.bool)
        poison[stage.poisoned.indices] = True
        n_poison = int(poison.sum())
        metrics: dict[str, Any] = {"n_queries": n_queries, "n_candidates": len(test_x) - n_queries,
                                   "n_train": len(poison), "n_poison": n_poison, "random_auprc": n_poison / len(poison),
                                   "checkpoints": len(checkpoints)}  # fmt: skip
        for method, table in scores.items():
            per_query = [average_precision(table[q], poison) for q in range(n_queries)]
            top = table[:n_queries].topk(n_poison, dim=1).indices
            anomaly = tail_anomaly(table)
            ranks = [1 + int((anomaly[n_queries:] > anomaly[q]).sum()) for q in range(n_queries)]
            metrics |= {
                f"{method}_auprc": sum(per_query) / n_queries,
                f"{method}_auprc_per_query": per_query,
                f"{method}_precision_at_poison_count": float(poison[top].float().mean()),
                f"{method}_target_rank": sum(ranks) / n_queries,
                f"{method}_target_identified": sum(r == 1 for r in ranks) / n_queries,
                f"{method}_seconds_per_input": seconds[method] / len(test_x),
            }
        titles = {f"{m}_auprc": f"{m} AUPRC" for m in methods}
        recorder.record["backdoor"] = {"attack_run": attack_record["run_id"], "key": stage.key}
        recorder.finish_metrics(metrics, titles, {})
        print(format_identify(recorder.names, metrics, methods))
    print(f"record: {recorder.run_dir / 'record.json'}")
    return recorder.record


def format_identify(names: dict[str, Any], metrics: dict[str, Any], methods: list[str]) -> str:
    lines = [f"poison identification for {names['attack']} on {names['model']} / {names['dataset']} "
             f"({metrics['n_queries']} queries, {metrics['n_poison']} poisoned of {metrics['n_train']}; "
             f"random AUPRC {metrics['random_auprc']:.3f}):"]  # fmt: skip
    for m in methods:
        rank, precision = metrics[f"{m}_target_rank"], metrics[f"{m}_precision_at_poison_count"]
        lines.append(f"  {m:<12} AUPRC {metrics[f'{m}_auprc']:.3f}, precision at |poison| {precision:.3f}, "
                     f"target rank {rank:.2f} of {metrics['n_candidates'] + 1}, "
                     f"{metrics[f'{m}_seconds_per_input']:.2f} s per input")  # fmt: skip
    return "\n".join(lines)
