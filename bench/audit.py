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
- ``robust``: ``train=pgd_at``, ``trades`` and ``fast_at`` models on MNIST (ε 0.3) and CIFAR-10 (ε 8/255), at the
  CPU-sized recipes of ``ROBUST``: training time per epoch, clean accuracy, our AutoAttack and torchattacks' on
  the same images, and (PGD-AT and TRADES: the no-false-alarm check) the audit's flags and lowest robust accuracy.
- ``grading``: the perturbation-grading defense (``conf/defense/perturbation_grading.yaml``) on CIFAR-10: clean
  accuracy, the paper's non-adaptive protocol (PGD on the undefended model, evaluated through the defense) at
  2/255, 4/255 and 8/255, the adaptive attack (PGD through the defense, BPDA through JPEG and the deep image
  prior; the flip is deterministic, so no EOT is needed), and the defense's compute time per image.
- ``speed``: our AutoAttack vs torchattacks' (standard, with FAB-T) on the same model and images, at the same
  iterations: the paper's 100 (torchattacks' cascade built with ``steps=100``) and torchattacks' default 10
  (its ``AutoAttack`` class; ours with ``steps=10``): robust accuracy and wall time, as ratios.

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
from advsuite.attacks.whitebox import PGD, AutoAttack
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
#: CPU-sized robust recipes. MNIST (ε 0.3): 3 epochs on a 20k subset, ε ramped up over the first (without the
#: ramp PGD-AT stays at chance in 3 epochs), attacks of 10 steps of 2.5·ε/10 (Madry: 40 steps of 0.01, ~100
#: epochs). CIFAR-10 (ε 8/255): 5 epochs on a 10k subset, ε ramped up over the first two (without it PGD-AT sat
#: at chance), 7 steps of 2/255 (Madry/Rice: 7–10 steps, 100–200 epochs of a ResNet/WRN). fast_at: FGSM from
#: a random start, step 1.25·ε (Wong et al.).
_MNIST = ["train.epochs=3", "train.train_subset=20000", "train.adv_eps=0.3", "train.adv_eps_warmup=1"]
_CIFAR = ["train.epochs=5", "train.train_subset=10000", "train.adv_eps_warmup=2"]
ROBUST: dict[str, dict[str, list[str]]] = {
    "mnist": {
        "pgd_at": ["train=pgd_at", *_MNIST, "train.adv_steps=10", "train.adv_step_size=null"],
        "trades": ["train=trades", *_MNIST, "train.adv_steps=10", "train.adv_step_size=null", "train.trades_beta=6.0"],
        "fast_at": ["train=fast_at", *_MNIST],
    },
    "cifar10": {"pgd_at": ["train=pgd_at", *_CIFAR], "trades": ["train=trades", *_CIFAR],
                "fast_at": ["train=fast_at", *_CIFAR]},
}  # fmt: skip
#: the perturbation-grading protocol's budgets (L∞, CIFAR-10)
GRADING_EPS = (2 / 255, 4 / 255, 8 / 255)


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
    return Settings(eps=eps, steps=50, eot_iter=eot, decision_budget=1000, random_samples=100)


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


def train_seconds_per_epoch(model: Classifier) -> float:
    recipe: Any = model.info.get("recipe") or {}
    return float(model.info.get("train_seconds") or 0.0) / max(1, int(recipe.get("epochs", 1)))  # type: ignore[arg-type]


def robust(args: argparse.Namespace, save: Any) -> None:
    import torchattacks

    for dataset in args.dataset:
        eps = DATASETS[dataset][2]
        for name, extra in ROBUST[dataset].items():
            if args.only and name not in args.only:
                continue
            model, data = victim(dataset, extra, args)
            x, y = as_tensors(data.test, args.images)
            clean = model.predict(x) == y
            row: dict[str, Any] = {"eps": eps, "recipe": extra, "n": len(x),
                                   "clean_accuracy": float(clean.float().mean()),
                                   "clean_accuracy_full": model.info.get("clean_accuracy"),
                                   "train_s_per_epoch": train_seconds_per_epoch(model)}  # fmt: skip
            if name != "fast_at":  # the no-false-alarm check
                row |= run_audit(model, x, y, None, settings(eps))
            xs, ys = x[clean], y[clean]
            t0 = time.perf_counter()
            ours = AutoAttack(eps=eps)(model, xs, ys).x_adv
            t1 = time.perf_counter()
            theirs = torchattacks.AutoAttack(model, norm="Linf", eps=eps, n_classes=10, seed=0)(xs, ys)
            t2 = time.perf_counter()
            theirs_100 = theirs_at_paper_steps(model, eps)(xs, ys)
            n = len(x)  # robust accuracy over all images: misclassified ones count as broken
            row |= {"autoattack": float((model.predict(ours) == ys).sum()) / n,
                    "torchattacks": float((model.predict(theirs) == ys).sum()) / n,
                    "torchattacks_100": float((model.predict(theirs_100) == ys).sum()) / n,
                    "ours_s": t1 - t0, "theirs_s": t2 - t1}  # fmt: skip
            save(f"robust/{dataset}/{name}", row)


def grading(args: argparse.Namespace, save: Any) -> None:
    from advsuite.defense import defend

    model, data = victim("cifar10", [], args)
    cfg = compose("config", plugin_overrides(["dataset=cifar10_npz", "defense=perturbation_grading"]))
    defense = instantiate(cfg.defense)
    x, y = as_tensors(data.test, args.images)
    defended = defend(model, defense)  # white-box attacks pass JPEG and the DIP by BPDA
    t0 = time.perf_counter()
    clean_defended = float((defended.predict(x) == y).float().mean())
    row: dict[str, Any] = {"n": len(x), "threshold": defense.threshold, "dip_iters": defense.dip_iters,
                           "steps": args.grading_steps, "clean_accuracy": float((model.predict(x) == y).float().mean()),
                           "clean_defended": clean_defended, "s_per_image_clean": (time.perf_counter() - t0) / len(x),
                           "graded_large_clean": float(defense.grade(x).float().mean()), "by_eps": {}}  # fmt: skip
    for eps in GRADING_EPS:
        attack = PGD(eps=eps, steps=args.grading_steps, seed=0)
        x_adv = attack(model, x, y).x_adv  # the paper's protocol: attack the undefended model ...
        t0 = time.perf_counter()
        through = defended.predict(x_adv) == y  # ... and evaluate through the defense
        seconds = (time.perf_counter() - t0) / len(x)
        t0 = time.perf_counter()
        adaptive = attack(defended, x, y).x_adv  # adaptive: PGD through the defense (BPDA)
        adaptive_s = time.perf_counter() - t0
        row["by_eps"][f"{eps:.6g}"] = {
            "undefended": float((model.predict(x_adv) == y).float().mean()),
            "non_adaptive": float(through.float().mean()),
            "adaptive": float((defended.predict(adaptive) == y).float().mean()),  # a fresh re-check
            "graded_large": float(defense.grade(x_adv).float().mean()),
            "s_per_image_attacked": seconds, "adaptive_s": adaptive_s}  # fmt: skip
        save("grading/cifar10/perturbation_grading", row)


def theirs_at_paper_steps(model: Classifier, eps: float) -> Any:
    """torchattacks' standard AutoAttack cascade with the paper's 100 iterations (its AutoAttack class leaves
    APGD, APGD-T and FAB at their default of 10)."""
    import torchattacks as ta

    return ta.MultiAttack([ta.APGD(model, eps=eps, steps=100, loss="ce", seed=0),
                           ta.APGDT(model, eps=eps, steps=100, n_classes=10, seed=0),
                           ta.FAB(model, eps=eps, steps=100, multi_targeted=True, n_classes=10, seed=0),
                           ta.Square(model, eps=eps, n_queries=5000, seed=0)])  # fmt: skip


def speed_row(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, Any]:
    import torchattacks

    runs = {
        "ours_100": lambda: AutoAttack(eps=eps)(model, x, y).x_adv,
        "theirs_100": lambda: theirs_at_paper_steps(model, eps)(x, y),
        "ours_10": lambda: AutoAttack(eps=eps, steps=10)(model, x, y).x_adv,
        "theirs_10": lambda: torchattacks.AutoAttack(model, norm="Linf", eps=eps, n_classes=10, seed=0)(x, y),
    }
    row: dict[str, Any] = {"eps": eps, "n": len(x)}
    for name, attack in runs.items():
        start = time.perf_counter()
        x_adv = attack()
        row[f"{name}_s"] = time.perf_counter() - start
        row[f"{name}_robust"] = float((model.predict(x_adv) == y).float().mean())
    return row


def speed(args: argparse.Namespace, save: Any) -> None:
    """Our AutoAttack and torchattacks' at the same iterations: the paper's 100, and torchattacks' default 10;
    on the MNIST PGD-AT model (ε 0.3: most points stay robust, so every stage runs in full) and the standard
    CIFAR-10 model (8/255)."""
    for dataset in args.dataset:
        extra = ROBUST["mnist"]["pgd_at"] if dataset == "mnist" else []
        model, data = victim(dataset, extra, args)
        eps = DATASETS[dataset][2]
        x, y = as_tensors(data.test, args.images)
        keep = model.predict(x) == y
        x, y = x[keep], y[keep]
        row = speed_row(model, x, y, eps) | {"model": "pgd_at" if extra else "standard"}
        save(f"speed/{dataset}/autoattack_steps", row)


def over_all(row: dict[str, Any], key: str) -> float:
    """An audit robust accuracy over every image; rows recorded before the audit counted that way hold it over
    the attacked (correctly classified) images, a share ``clean_accuracy`` of them."""
    value = float(row[key])
    return value if "n_images" in row else value * float(row["clean_accuracy"])


def markdown(runs: dict[str, Any]) -> str:
    lines = []
    for where in sorted({k.split("/")[1] for k in runs if k.startswith("broken/")}):
        keys = [k for k in runs if k.startswith(f"broken/{where}/")]
        none = runs.get(f"broken/{where}/none")
        base = None if none is None else over_all(none, "lowest_robust_accuracy")
        lines += [f"### Known-broken defenses, {where}", "",
                  "| defense | naive PGD | audit lowest (attack) | undefended lowest | flags | time |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for k in keys:
            r = runs[k]
            lines.append(f"| {k.split('/')[-1]} | {over_all(r, 'naive_robust_accuracy'):.3f} | "
                         f"{over_all(r, 'lowest_robust_accuracy'):.3f} "
                         f"({r['lowest_attack']}) | {base if base is None else f'{base:.3f}'} | "
                         f"{', '.join(r['flags']) or 'none'} | {r['wall_s']:.0f} s |")  # fmt: skip
        lines.append("")
    robust_rows = {k: r for k, r in runs.items() if k.startswith("robust/") and "eps" in r}
    if robust_rows:
        lines += ["### Robust training: no false alarm, AutoAttack cross-check", "",
                  "| model | ε | train s/epoch | clean (n / full test) | audit lowest (attack) / combined | flags | "
                  "our AA | torchattacks AA, 100 / 10 iterations |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for k, r in robust_rows.items():
            audit = ("–", "–")
            if "flags" in r and r["flags"] is not None:
                audit = (f"{over_all(r, 'lowest_robust_accuracy'):.3f} ({r['lowest_attack']}) / "
                         f"{over_all(r, 'combined_robust_accuracy'):.3f}", ", ".join(r["flags"]) or "none")  # fmt: skip
            full = r.get("clean_accuracy_full")
            lines.append(f"| {k.split('/', 1)[1]} | {r['eps']:.4g} | {r['train_s_per_epoch']:.0f} | "
                         f"{r['clean_accuracy']:.3f} / {'–' if full is None else f'{full:.3f}'} | "
                         f"{audit[0]} | {audit[1]} | {r['autoattack']:.3f} | "
                         f"{r.get('torchattacks_100', float('nan')):.3f} / {r['torchattacks']:.3f} |")  # fmt: skip
        lines.append("")
    if (g := runs.get("grading/cifar10/perturbation_grading")) is not None:
        lines += [f"### Perturbation grading, CIFAR-10 ({g['n']} images, threshold {g['threshold']:g}, DIP "
                  f"{g['dip_iters']} steps, PGD {g['steps']} steps)", "",
                  f"Clean accuracy {g['clean_accuracy']:.3f} undefended, {g['clean_defended']:.3f} through the defense "
                  f"({g['graded_large_clean']:.0%} of clean images graded large; {g['s_per_image_clean']:.2f} s per "
                  "clean image).", "",
                  "| ε | undefended | non-adaptive (paper's protocol) | adaptive (BPDA) | graded large | "
                  "defense s/image | adaptive attack time |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for eps, r in g["by_eps"].items():
            lines.append(f"| {float(eps) * 255:.0f}/255 | {r['undefended']:.3f} | {r['non_adaptive']:.3f} | "
                         f"{r['adaptive']:.3f} | {r['graded_large']:.0%} | {r['s_per_image_attacked']:.2f} | "
                         f"{r['adaptive_s']:.0f} s |")  # fmt: skip
        lines.append("")
    for k, r in runs.items():
        if k.startswith("robust/") and "eps" not in r:  # rows of the first, MNIST-only robust section
            lines.append(f"- {k}: clean {r['clean_accuracy']:.3f}, audit lowest {r['lowest_robust_accuracy']:.3f} "
                         f"({r['lowest_attack']}), flags {r['flags'] or 'none'}, our AutoAttack {r['autoattack']:.3f}, "
                         f"torchattacks {r['torchattacks']:.3f}")  # fmt: skip
        if k.startswith("speed/") and "ours_s" in r:  # the first speed rows: ours at 100 steps, theirs at 10
            lines.append(f"- {k}: ε {r['eps']:.4g}, {r['n']} images: ours {r['ours_robust']:.3f} in "
                         f"{r['ours_s']:.1f} s, torchattacks {r['theirs_robust']:.3f} in {r['theirs_s']:.1f} s "
                         f"(ours / theirs {r['ours_s'] / r['theirs_s']:.2f}×)")  # fmt: skip
        if k.startswith("speed/") and "ours_100_s" in r:
            lines.append(f"- {k} ({r['model']} model, ε {r['eps']:.4g}, {r['n']} images): 100 iterations: ours "
                         f"{r['ours_100_robust']:.3f} in {r['ours_100_s']:.1f} s, torchattacks "
                         f"{r['theirs_100_robust']:.3f} in {r['theirs_100_s']:.1f} s (ours / theirs "
                         f"{r['ours_100_s'] / r['theirs_100_s']:.2f}×); 10 iterations: ours {r['ours_10_robust']:.3f} "
                         f"in {r['ours_10_s']:.1f} s, torchattacks {r['theirs_10_robust']:.3f} in "
                         f"{r['theirs_10_s']:.1f} s ({r['ours_10_s'] / r['theirs_10_s']:.2f}×)")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help="broken | robust | grading | speed (default all)")
    parser.add_argument("--dataset", action="append", help="mnist | cifar10 (default both)")
    parser.add_argument("--only", action="append", help="broken: only these defenses (plus the undefended row); "
                        "robust: only these recipes")  # fmt: skip
    parser.add_argument("--grading-steps", type=int, default=20, help="grading: PGD steps (each adaptive one runs "
                        "the deep image prior on every image graded large)")  # fmt: skip
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

    sections = args.section or ["broken", "robust", "grading", "speed"]
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        if "broken" in sections:
            for dataset in args.dataset:
                broken(dataset, args, save)
        if "robust" in sections:
            robust(args, save)
        if "grading" in sections:
            grading(args, save)
        if "speed" in sections:
            speed(args, save)
    print(markdown(runs))


if __name__ == "__main__":
    main()
