"""Audits of defenses whose failure is known, of robustly trained models, and our AutoAttack vs torchattacks'.

Victims come from the zoo (``$ADVSUITE_HOME/zoo``), trained on demand: ``smallcnn`` on MNIST (``dataset=mnist``,
3 epochs) and on CIFAR-10 (``dataset=cifar10_npz``, 5 epochs), the victims of ``bench/boundary.py``.

Sections (``--section``, default all):

- ``broken``: each known-broken defense at the dataset's ε (MNIST 0.3, CIFAR-10 8/255): JPEG (quality 75),
  bit-depth reduction (MNIST 1 bit, CIFAR-10 4), median smoothing (2×2), random resize-and-pad (1.1), Gaussian
  noise (σ 0.1 MNIST, 0.03 CIFAR-10), a k-WTA model (the victim with every ReLU replaced by k-winners-take-all,
  20% kept, fine-tuned one epoch; Xiao et al., ICLR 2020) and a softmax-saturating model (logits × 1000). For
  each: naive PGD's robust accuracy, the audit's lowest (and which attack found it), its flags, and the
  undefended model's lowest under the same audit. Randomized defenses are audited with ``eot_iter`` 20.
- ``robust``: ``train=pgd_at`` and ``trades`` MNIST models (ε 0.3, CPU-sized recipes below): the audit's flags
  and lowest robust accuracy against our AutoAttack and torchattacks' on the same images.
- ``speed``: our AutoAttack vs ``torchattacks.AutoAttack`` (standard, with FAB-T) on the same model and
  images: robust accuracy and wall time, as a ratio.

    export ADVSUITE_DATA=/work/shared/data
    python bench/audit.py --section broken --dataset mnist --images 100
    python bench/audit.py --markdown

Results accumulate in ``--json`` (default bench/results/audit.json), keyed ``section/dataset/name``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

import advsuite
from advsuite.attacks.audit import Settings
from advsuite.attacks.whitebox import AutoAttack
from advsuite.configs import plugin_overrides
from advsuite.data import as_tensors
from advsuite.defenses import JPEG, BitDepthReduction, GaussianNoise, MedianSmoothing, RandomResizePad
from advsuite.device import provenance
from advsuite.models import Classifier
from advsuite.models.zoo import load_model
from advsuite.paths import advsuite_home
from advsuite.training import train_classifier

#: dataset key -> (dataset config, victim overrides, eps, bit depth, noise sigma)
DATASETS: dict[str, tuple[str, list[str], float, int, float]] = {
    "mnist": ("mnist", ["train.epochs=3"], 0.3, 1, 0.1),
    "cifar10": ("cifar10_npz", ["train.epochs=5"], 8 / 255, 4, 0.03),
}
#: CPU-sized robust recipes on MNIST (ε 0.3): 3 epochs, PGD 10 steps of 0.075 (2.5·ε/steps)
ROBUST = {
    "pgd_at": ["train=pgd_at", "train.epochs=3", "train.adv_eps=0.3", "train.adv_steps=10", "train.adv_step_size=null"],
    "trades": ["train=trades", "train.epochs=3", "train.adv_eps=0.3", "train.adv_steps=10", "train.adv_step_size=null",
               "train.trades_beta=6.0"],
}  # fmt: skip


class KWTA(nn.Module):
    """k-winners-take-all (Xiao et al., ICLR 2020): per sample, keep the top ``ratio`` of a layer's activations."""

    def __init__(self, ratio: float = 0.2) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        k = max(1, int(self.ratio * flat.shape[1]))
        threshold = flat.topk(k, dim=1).values[:, -1:]
        return (flat * (flat >= threshold)).view_as(x)


class Saturated(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1000


def victim(dataset: str, extra: list[str], args: argparse.Namespace) -> tuple[Classifier, Any]:
    data_cfg, overrides, *_ = DATASETS[dataset]
    cfg = compose("config", plugin_overrides([f"dataset={data_cfg}", "model=smallcnn", *overrides, *extra]))
    data = instantiate(cfg.dataset)
    home = advsuite_home(cfg.paths.home)
    model = load_model(cfg.model, data, recipe=cfg.train, device="cpu", cache_dir=home / "zoo", seed=0)
    return model, data


def kwta_model(model: Classifier, data: Any) -> Classifier:
    """The victim with every ReLU replaced by k-WTA, fine-tuned one epoch (k-WTA changes what the layers see)."""
    import copy

    net = copy.deepcopy(model.net)
    for module in list(net.modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(module, child, KWTA(0.2))
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    out = Classifier(net, num_classes=model.num_classes, input_shape=model.input_shape, mean=mean, std=std,
                     name=f"{model.name}+kwta")  # fmt: skip
    train_classifier(out, data, {"epochs": 1, "lr": 0.01, "train_subset": 20000}, verbose=False)
    return out


def settings(eps: float, eot: int = 1) -> Settings:
    return Settings(eps=eps, steps=50, eot_iter=eot, square_queries=1000, decision_budget=1000, random_samples=100)


def run_audit(model: Classifier, x: torch.Tensor, y: torch.Tensor, defense: Any, s: Settings) -> dict[str, Any]:
    start = time.perf_counter()
    report = advsuite.audit(model, x, y, defense=defense, settings=s, verbose=False)
    out = report.summary() | {"wall_s": time.perf_counter() - start, "n": report.n}
    out.pop("checks")
    out["evidence"] = {c.name: c.evidence for c in report.checks if c.flagged}
    return out


def broken(dataset: str, args: argparse.Namespace, save: Any) -> None:
    model, data = victim(dataset, [], args)
    _, _, eps, bits, sigma = DATASETS[dataset]
    eps = args.eps or eps
    where = dataset if args.eps is None else f"{dataset}@{eps:g}"
    x, y = as_tensors(data.test, args.images)
    save(f"broken/{where}/none", run_audit(model, x, y, None, settings(eps)))
    defenses: dict[str, tuple[Any, Classifier, int]] = {
        "jpeg": (JPEG(75), model, 1),
        "bit_depth": (BitDepthReduction(bits), model, 1),
        "median": (MedianSmoothing(2), model, 1),
        "random_resize_pad": (RandomResizePad(1.1, seed=0), model, 20),
        "gaussian_noise": (GaussianNoise(sigma, seed=0), model, 20),
        "kwta": (None, kwta_model(model, data), 1),
        "saturated": (None, Classifier(Saturated(model), num_classes=10, input_shape=model.input_shape, name="sat"), 1),
    }
    for name, (defense, target, eot) in defenses.items():
        if args.only and name not in args.only:
            continue
        save(f"broken/{where}/{name}", run_audit(target, x, y, defense, settings(eps, eot)))


def robust(args: argparse.Namespace, save: Any) -> None:
    import torchattacks

    for name, extra in ROBUST.items():
        start = time.perf_counter()
        model, data = victim("mnist", extra, args)
        x, y = as_tensors(data.test, args.images)
        row = run_audit(model, x, y, None, settings(0.3))
        keep = model.predict(x) == y
        ours = AutoAttack(eps=0.3)(model, x[keep], y[keep]).x_adv
        theirs = torchattacks.AutoAttack(model, norm="Linf", eps=0.3, n_classes=10, seed=0)(x[keep], y[keep])
        row |= {"autoattack": float((model.predict(ours) == y[keep]).float().mean()),
                "torchattacks": float((model.predict(theirs) == y[keep]).float().mean()),
                "train_info": model.info.get("train_seconds"), "total_s": time.perf_counter() - start}  # fmt: skip
        save(f"robust/mnist/{name}", row)


def speed(args: argparse.Namespace, save: Any) -> None:
    import torchattacks

    for dataset in args.dataset:
        model, data = victim(dataset, [], args)
        eps = DATASETS[dataset][2] / (3 if dataset == "mnist" else 1)  # MNIST at 0.1: some images survive
        x, y = as_tensors(data.test, args.images)
        keep = model.predict(x) == y
        x, y = x[keep], y[keep]
        t0 = time.perf_counter()
        ours = AutoAttack(eps=eps)(model, x, y).x_adv
        t1 = time.perf_counter()
        theirs = torchattacks.AutoAttack(model, norm="Linf", eps=eps, n_classes=10, seed=0)(x, y)
        t2 = time.perf_counter()
        save(f"speed/{dataset}/autoattack", {"eps": eps, "n": len(x), "ours_s": t1 - t0, "theirs_s": t2 - t1,
             "ours_robust": float((model.predict(ours) == y).float().mean()),
             "theirs_robust": float((model.predict(theirs) == y).float().mean())})  # fmt: skip


def markdown(runs: dict[str, Any]) -> str:
    lines = []
    for where in sorted({k.split("/")[1] for k in runs if k.startswith("broken/")}):
        keys = [k for k in runs if k.startswith(f"broken/{where}/")]
        base = runs.get(f"broken/{where}/none", {}).get("lowest_robust_accuracy")
        lines += [f"### Known-broken defenses, {where}", "",
                  "| defense | naive PGD | audit lowest (attack) | undefended lowest | flags | time |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for k in keys:
            r = runs[k]
            lines.append(f"| {k.split('/')[-1]} | {r['naive_robust_accuracy']:.3f} | {r['lowest_robust_accuracy']:.3f} "
                         f"({r['lowest_attack']}) | {base if base is None else f'{base:.3f}'} | "
                         f"{', '.join(r['flags']) or 'none'} | {r['wall_s']:.0f} s |")  # fmt: skip
        lines.append("")
    for k, r in runs.items():
        if k.startswith("robust/"):
            lines.append(f"- {k}: clean {r['clean_accuracy']:.3f}, audit lowest {r['lowest_robust_accuracy']:.3f} "
                         f"({r['lowest_attack']}), flags {r['flags'] or 'none'}, our AutoAttack {r['autoattack']:.3f}, "
                         f"torchattacks {r['torchattacks']:.3f}")  # fmt: skip
        if k.startswith("speed/"):
            lines.append(f"- {k}: ε {r['eps']:.4g}, {r['n']} images: ours {r['ours_robust']:.3f} in "
                         f"{r['ours_s']:.1f} s, torchattacks {r['theirs_robust']:.3f} in {r['theirs_s']:.1f} s "
                         f"(ours / theirs {r['ours_s'] / r['theirs_s']:.2f}×)")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help="broken | robust | speed (default all)")
    parser.add_argument("--dataset", action="append", help="mnist | cifar10 (default both)")
    parser.add_argument("--only", action="append", help="broken: only these defenses (plus the undefended row)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--eps", type=float, default=None, help="broken: this eps instead of the dataset's")
    parser.add_argument("--json", type=Path, default=Path("bench/results/audit.json"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    args.dataset = args.dataset or list(DATASETS)
    runs = json.loads(args.json.read_text())["runs"] if args.json.exists() else {}
    if args.markdown:
        print(markdown(runs))
        return

    def save(key: str, row: dict[str, Any]) -> None:
        runs[key] = row | provenance()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs}, indent=1))
        print(key, {k: v for k, v in row.items() if k in ("naive_robust_accuracy", "lowest_robust_accuracy",
              "lowest_attack", "flags", "wall_s", "autoattack", "torchattacks", "ours_s", "theirs_s")})  # fmt: skip

    sections = args.section or ["broken", "robust", "speed"]
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        if "broken" in sections:
            for dataset in args.dataset:
                broken(dataset, args, save)
        if "robust" in sections:
            robust(args, save)
        if "speed" in sections:
            speed(args, save)
    print(markdown(runs))


if __name__ == "__main__":
    main()
