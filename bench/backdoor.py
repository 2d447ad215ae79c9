"""Backdoor benchmark: poisoning attacks at 10% (all-to-one, target 0) on MNIST and CIFAR-10, the attack × defense
grid, poison identification by influence, and the costs. Every number comes from the CLI's tasks (records under
``$ADVSUITE_HOME``), run in process.

Sections (``--section``, default all):

- ``attacks``: ``task=backdoor`` for BadNets, Blended, WaNet, SIG and LC: CA, ASR, RA on the whole test split, the
  clean model's CA (same recipe, same seed), training time per epoch.
- ``defenses``: ``task=backdoor_defense`` for each attack × {fine-tuning, Fine-Pruning, Neural Cleanse, STRIP,
  Spectral, Activation Clustering} on ``--defense-test`` test images: CA/ASR/RA after, DER, detection AUROC,
  Neural Cleanse's flagged classes, the defense's time.
- ``identify``: ``task=backdoor_identify`` for BadNets and Blended: poison AUPRC of GAS (renormalised TracIn),
  TracIn and representer similarity, target rank, seconds per test input.

CPU-sized recipes (``SETTINGS``): MNIST (60k) with ``smallcnn``, 4 epochs; CIFAR-10 (the JPEG-decoded copy, a
seeded 20,000 of its 50k training images) with ``convnet``, 8 epochs; both SGD (lr 0.05, Nesterov, cosine,
batch 128) with the zoo's augmentation; ``cifar10_full``: all 50k for 15 epochs. BackdoorBench trains PreAct-ResNet18
for 100 epochs on all 50k.

    export ADVSUITE_DATA=/work/shared/data
    python bench/backdoor.py --dataset mnist
    python bench/backdoor.py --dataset cifar10 --section attacks
    python bench/backdoor.py --dataset cifar10_full --section attacks --attacks badnets blended
    python bench/backdoor.py --dataset cifar10_full --section defenses --attacks badnets --defenses neural_cleanse \
        --defense-set defense.steps=1000
    python bench/backdoor.py --markdown

Results accumulate in ``--json`` (default bench/results/backdoor.json), keyed ``dataset/section/attack[/defense]``;
a finished configuration is not rerun (the records' own skip), so a stopped benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module

from advsuite.tasks import run_task

ATTACKS = ("badnets", "blended", "wanet", "sig", "lc")
DEFENSES = ("fine_tuning", "fine_pruning", "neural_cleanse", "strip", "spectral", "activation_clustering")
IDENTIFIED = ("badnets", "blended")
#: clean-label attacks poison only the target class: on MNIST its 5,923 images are 9.9% of the training set, and
#: in a random 20,000 of CIFAR-10 about 10% ± 0.2%; they run at 9%
ATTACK_OPTIONS = {(d, a): ("attack.rate=0.09",) for d in ("mnist", "cifar10", "cifar10_full") for a in ("sig", "lc")}
SETTINGS = {
    "mnist": ("dataset=mnist", "model=smallcnn", "train.epochs=4"),
    "cifar10": ("dataset=cifar10_npz", "model=convnet", "train.epochs=8", "train.train_subset=20000"),
    #: the converged recipe (all 50k, 15 epochs: 82.6% clean) for the CA-within-1-point target
    "cifar10_full": ("dataset=cifar10_npz", "model=convnet", "train.epochs=15"),
}
#: BackdoorBench's leaderboard (backdoorbench.github.io, CIFAR-10, PreAct-ResNet18, 100 epochs, 10%): CA / ASR / RA
BACKDOORBENCH = {
    "badnets": (91.32, 95.03, 4.67),
    "blended": (93.47, 99.92, 0.08),
    "lc": (84.59, 99.92, 0.07),
    "sig": (84.48, 98.27, 1.72),
    "wanet": (91.25, 89.73, 9.76),
}
KEPT = ("clean_accuracy", "asr", "ra", "clean_model_accuracy", "ca_drop", "n_test", "n_backdoor_test", "n_poisoned",
        "train_seconds", "seconds_per_epoch", "model_source", "der", "before_clean_accuracy", "before_asr",
        "before_ra", "detection_auroc", "detection_tpr", "removed", "removed_poison_recall", "removed_precision",
        "defense_seconds", "defense_flagged_classes", "target_flagged", "target_anomaly_index",
        "defense_pruned_units", "random_auprc", "n_queries", "checkpoints")  # fmt: skip


def run(*overrides: str, verbose: bool) -> dict[str, Any]:
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"verbose={verbose}", *overrides])
    started = time.perf_counter()
    record = run_task(cfg)
    assert isinstance(record, dict)
    record["bench_seconds"] = time.perf_counter() - started
    return record


def summary(record: dict[str, Any]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    kept = {k: metrics[k] for k in KEPT if k in metrics}
    kept |= {k: v for k, v in metrics.items() if k.endswith(("_auprc", "_target_rank", "_precision_at_poison_count",
                                                             "_seconds_per_input", "_target_identified"))}  # fmt: skip
    return kept | {"run_id": record.get("run_id"), "seconds": round(record.get("bench_seconds", 0.0), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(SETTINGS), default="mnist")
    parser.add_argument("--section", choices=("attacks", "defenses", "identify", "all"), default="all")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES))
    parser.add_argument("--defense-test", type=int, default=2000, help="test images per defense run")
    parser.add_argument("--defense-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="defense options (e.g. defense.steps=1000), also named in the result's key")  # fmt: skip
    parser.add_argument("--identify-params", choices=("all", "head"), default="all")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "backdoor.json")
    parser.add_argument("--markdown", action="store_true", help="print the recorded results as tables and exit")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--redo", action="store_true", help="rerun finished configurations (caches still hit)")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    setting = SETTINGS[args.dataset]
    if args.markdown:
        print(markdown(results))
        return

    def keep(key: str, *overrides: str) -> None:
        try:
            record = run(*overrides, *setting, *(["redo=true"] if args.redo else []), verbose=args.verbose)
        except Exception as exc:  # one configuration failing (a refused option, say) must not stop the grid
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            results[key] = summary(record)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"{key}: {json.dumps(results[key])}", flush=True)

    sections = ("attacks", "defenses", "identify") if args.section == "all" else (args.section,)
    if "attacks" in sections:
        for attack in args.attacks:
            extra = ATTACK_OPTIONS.get((args.dataset, attack), ())
            keep(f"{args.dataset}/attacks/{attack}", "task=backdoor", f"attack={attack}", *extra)
    if "defenses" in sections:
        for attack in args.attacks:
            for defense in args.defenses:
                tag = "".join(f"[{o.removeprefix('defense.')}]" for o in args.defense_set)
                keep(f"{args.dataset}/defenses/{attack}/{defense}{tag}", "task=backdoor_defense", f"backdoor={attack}",
                     f"defense={defense}", f"task.n_test={args.defense_test}", *args.defense_set)  # fmt: skip
    if "identify" in sections:
        for attack in [a for a in IDENTIFIED if a in args.attacks]:
            keep(
                f"{args.dataset}/identify/{attack}",
                "task=backdoor_identify",
                f"backdoor={attack}",
                f"task.params={args.identify_params}",
            )


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def markdown(results: dict[str, Any]) -> str:
    out = []
    for dataset in SETTINGS:
        rows = [(a, results.get(f"{dataset}/attacks/{a}")) for a in ATTACKS]
        if any(r for _, r in rows):
            out.append(f"### {dataset}: attacks at 10% poison\n\n| attack | CA | ASR | RA | clean model CA | "
                       "s / epoch | BackdoorBench CIFAR-10 CA / ASR / RA |\n|---|---|---|---|---|---|---|")  # fmt: skip
            for a, r in rows:
                if r and "error" not in r:
                    per_epoch = r.get("seconds_per_epoch") or 0
                    out.append(f"| {a} | {_pct(r['clean_accuracy'])} | {_pct(r['asr'])} | {_pct(r['ra'])} | "
                               f"{_pct(r.get('clean_model_accuracy'))} | {per_epoch:.0f} | "
                               f"{' / '.join(str(v) for v in BACKDOORBENCH[a])} |")  # fmt: skip
        grid = {(a, d): results.get(f"{dataset}/defenses/{a}/{d}") for a in ATTACKS for d in DEFENSES}
        if any(grid.values()):
            out.append(f"\n### {dataset}: CA / ASR / RA after each defense (DER; detection AUROC)\n\n| attack | "
                       + " | ".join(DEFENSES) + " |\n|---|" + "---|" * len(DEFENSES))  # fmt: skip
            for a in ATTACKS:
                cells = []
                for d in DEFENSES:
                    r = grid[(a, d)]
                    if not r or "error" in r:
                        cells.append("–")
                        continue
                    auroc = f"; {r['detection_auroc']:.2f}" if "detection_auroc" in r else ""
                    flagged = f"; flags {r['defense_flagged_classes']}" if "defense_flagged_classes" in r else ""
                    cells.append(f"{_pct(r['clean_accuracy'])} / {_pct(r['asr'])} / {_pct(r['ra'])} "
                                 f"({r['der']:.2f}{auroc}{flagged})")  # fmt: skip
                if any(c != "–" for c in cells):
                    out.append(f"| {a} | " + " | ".join(cells) + " |")
            seconds = {d: [r["defense_seconds"] for a in ATTACKS if (r := grid[(a, d)]) and "error" not in r]
                       for d in DEFENSES}  # fmt: skip
            out.append("\ndefense time (s, mean over attacks): " + ", ".join(
                f"{d} {sum(v) / len(v):.0f}" for d, v in seconds.items() if v))  # fmt: skip
        ident = [(a, results.get(f"{dataset}/identify/{a}")) for a in IDENTIFIED]
        if any(r for _, r in ident):
            out.append(f"\n### {dataset}: poison identification (AUPRC; target rank; s per input)\n\n"
                       "| attack | random | GAS | TracIn | representer |\n|---|---|---|---|---|")  # fmt: skip
            for a, r in ident:
                if r and "error" not in r:
                    cells = [f"{r[f'{m}_auprc']:.3f}; {r[f'{m}_target_rank']:.1f}; {r[f'{m}_seconds_per_input']:.2f}"
                             for m in ("gas", "tracin", "representer")]  # fmt: skip
                    out.append(f"| {a} | {r['random_auprc']:.3f} | " + " | ".join(cells) + " |")
        out.append("")
    failed = [f"- {key}: {r['error']}" for key, r in sorted(results.items()) if "error" in r]
    return "\n".join(out + (["failed configurations:", *failed] if failed else []))


if __name__ == "__main__":
    main()
