"""Decision-based (boundary) attacks: distortion vs queries, speed and cross-checks on MNIST and CIFAR-10.

Native HSJA (paper constants ``hsja`` and the QEBA authors' ``hsja_qeba``), QEBA-S/F/I, NLBA-AE/VAE/GAN and
PSBA, with foolbox 3.3.4 HSJA (one image per call, and batched) and Boundary as cross-checks. Data, victims
(zoo ``smallcnn`` on MNIST, ``cifarcnn`` on CIFAR-10, trained on demand and cached under
``$ADVSUITE_HOME/zoo``) and attacks come from advsuite's own Hydra configs; prior attacks are prepared as
``task=evaluate`` does (their priors are trained on demand and cached too).

Every method attacks the same images: the first ``--images`` test images the victim classifies correctly.
Targeted (the authors' protocol): targets drawn with ``choose_targets(..., "random", seed)``, each attack
starts from a correctly classified test image of the target class (``starting_images``). Untargeted: each
attack's own start. foolbox methods make one model call per probe, so they run on the first ``--fb-images``
of the same images with ``--fb-budget`` queries; cross-check ratios compare native HSJA on that subset.

Per budget (1k/2k/5k/10k, up to each method's budget): median and geometric-mean per-pixel MSE and L2 of the
best adversarial found within the budget (read from the attack's trace), success rate at two MSE thresholds,
time per 1,000 queries (wall time of the attack call / all its queries), share of wall time in the model's
forward pass (``LabelOracle.forward_seconds`` / wall), rows per model call, and ``flips`` (claimed successes that
fail a fresh forward of all returned points in one batch). An image without an adversarial counts as MSE 1 (the
largest possible in [0, 1]). Comparisons against the HSJA baselines use one-sided paired Wilcoxon signed-rank
tests on log MSE over the common images.

    export ADVSUITE_DATA=/work/shared/data
    python bench/boundary.py --dataset mnist                 # all methods, both modes, 50 images, 10k queries
    python bench/boundary.py --dataset cifar10 --mode targeted --methods hsja,hsja_qeba,qeba_s,qeba_f
    python bench/boundary.py --dataset mnist --images 4 --budget 1000 --methods hsja,qeba_s,fb_hsja \\
        --fb-images 2 --fb-budget 1000 --json /tmp/boundary-smoke.json       # smoke test, ~1 min
    python bench/boundary.py --markdown                      # the docs/benchmarks.md section, from the JSON
    python bench/boundary.py --compact                       # one gmean-MSE row per method and track

Victims train with ``train.epochs`` 3 (MNIST) / 5 (CIFAR-10); ``--override cifar10:train.epochs=8`` changes
one dataset's (a new zoo cache entry), ``--override KEY=VALUE`` every dataset's.

Results accumulate in ``--json`` (default bench/results/boundary.json), keyed dataset/mode/method (a rerun replaces
its key), written after every method (re-read first, so concurrent runs on other keys are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import wilcoxon

from advsuite.attack import PrepareContext
from advsuite.configs import plugin_overrides
from advsuite.data import as_tensors
from advsuite.device import describe_machine, resolve_device
from advsuite.models.zoo import load_model
from advsuite.oracles import LabelOracle, is_adversarial
from advsuite.paths import advsuite_home
from advsuite.plots import distance_at_queries
from advsuite.tasks.evaluate import choose_targets, starting_images

BUDGETS = (1000, 2000, 5000, 10000)
#: dataset key -> (dataset config, victim model config, default overrides, MSE success thresholds)
DATASETS: dict[str, tuple[str, str, list[str], tuple[float, float]]] = {
    "mnist": ("mnist", "smallcnn", ["train.epochs=3"], (5e-3, 1e-3)),
    # smallcnn, not cifarcnn: cifarcnn forwards ~230 images/s on the 2-core CPU, so 10k queries x 50 images
    # would take ~36 min per method; smallcnn (2 conv + 2 fc) is ~20x faster
    "cifar10": ("cifar10_npz", "smallcnn", ["train.epochs=5"], (1e-4, 1e-5)),
    # a second CIFAR-10 victim of another architecture, never used to tune the attacks (82.4% clean accuracy;
    # ~2,700 images/s forward, so 10k queries x 50 images cost ~3 min per method)
    "cifar10_convnet": ("cifar10_npz", "convnet", ["train.epochs=15"], (1e-4, 1e-5)),
    # the larger-input track: CIFAR-10 resized to 64 px, a convnet trained at that size (8 epochs on 20k images)
    "cifar10_64": ("cifar10_64", "convnet", ["train.epochs=8", "train.train_subset=20000"], (1e-4, 1e-5)),
}
#: prior overrides for the ``*_ref6`` variants: references trained 6 epochs on the whole training split
STRONG_REFERENCES = ["attack.prior.reference_recipe.epochs=6", "attack.prior.reference_recipe.train_subset=null"]
#: the papers' fixed subspace (the projection attacks' default widens it where progress stalls)
FIXED = "attack.widen=none"
#: method -> attack config overrides
METHODS: dict[str, list[str]] = {
    "hsja": ["attack=hsja"],
    "hsja_qeba": ["attack=hsja", "attack.constants=qeba"],
    "qeba_s": ["attack=qeba_s", FIXED],  # factor auto: 2 on MNIST and CIFAR-10 (d/4), as the authors' CIFAR code
    "qeba_f": ["attack=qeba_f", FIXED],
    # factor 4 (d/16): the authors' size for 224-px inputs, for comparison
    "qeba_s_f4": ["attack=qeba_s", "attack.factor=4", FIXED],
    "qeba_f_f4": ["attack=qeba_f", "attack.factor=4", FIXED],
    # 30 probes per iteration, as the authors' CIFAR scripts (more iterations for the same budget)
    "qeba_f_p30": ["attack=qeba_f", "attack.num_probes=30", FIXED],
    "qeba_i": ["attack=qeba_i", FIXED],
    "nlba_ae": ["attack=nlba_ae", FIXED],
    "nlba_vae": ["attack=nlba_vae", FIXED],
    "nlba_gan": ["attack=nlba_gan", FIXED],
    "psba": ["attack=psba", FIXED],  # the progressive scale search
    "psba_auto": ["attack=psba", "attack.scale=auto", FIXED],  # the scale nearest side / 8 (4x4 on CIFAR-10)
    "psba_scale3": ["attack=psba", "attack.scale=3", FIXED],  # 16x16 on CIFAR-10, 28x28 on MNIST
    "psba_spectrum": ["attack=psba", "attack.spectrum=192", FIXED],  # top d/16 components of full-scale outputs
    "psba_spectrum_widen": ["attack=psba", "attack.spectrum=192"],
    "nlba_vae_spectrum": ["attack=nlba_vae", "attack.spectrum=192"],  # our extension: PCA of the decoder's outputs
    # priors from stronger references: 6 epochs on the whole training split instead of 3 on a 10k subset
    **{f"{m}_ref6": [f"attack={m}", *STRONG_REFERENCES, FIXED] for m in ("qeba_i", "nlba_vae", "psba")},
    # the configs' default: the subspace widened where an image's progress stalls (ProjectedHSJA.widen)
    **{f"{m}_widen": [f"attack={m}"] for m in ("qeba_s", "qeba_f", "qeba_i", "nlba_vae", "psba")},
    "fb_hsja": ["attack=fb_hsja", "attack.per_image=true"],
    "fb_hsja_batched": ["attack=fb_hsja", "attack.per_image=false"],
    "fb_boundary": ["attack=fb_boundary"],
}
PRIOR_METHODS = (
    "qeba_i",
    "nlba_ae",
    "nlba_vae",
    "nlba_gan",
    "psba",
    "qeba_i_ref6",
    "nlba_vae_ref6",
    "psba_ref6",
    "psba_auto",
    "psba_spectrum",
    "psba_spectrum_widen",
    "nlba_vae_spectrum",
    "qeba_i_widen",
    "nlba_vae_widen",
    "psba_widen",
)
#: methods that must beat the HSJA baselines on CIFAR-10 targeted (§10 of the research notes)
CHALLENGERS = ("qeba_s", "qeba_f", "qeba_i", "nlba_vae", "psba")
#: also compared with the baselines, but not part of the target
OTHERS = (
    "qeba_s_f4",
    "qeba_f_f4",
    "qeba_f_p30",
    "nlba_ae",
    "nlba_gan",
    "psba_scale3",
    "psba_auto",
    "psba_spectrum",
    "psba_spectrum_widen",
    "nlba_vae_spectrum",
    "qeba_i_ref6",
    "nlba_vae_ref6",
    "psba_ref6",
    "qeba_s_widen",
    "qeba_f_widen",
    "qeba_i_widen",
    "nlba_vae_widen",
    "psba_widen",
)


# ----------------------------------------------------------------------------------- setup


def config(dataset: str, args: argparse.Namespace, *extra: str) -> Any:
    """advsuite's root config for ``dataset`` and its victim, with the defaults, ``--override`` and ``extra``."""
    data_cfg, model_cfg, _, _ = DATASETS[dataset]
    overrides = [f"dataset={data_cfg}", f"model={model_cfg}", f"seed={args.seed}", *victim_overrides(dataset, args)]
    return compose("config", plugin_overrides([*overrides, *extra]))


def victim_overrides(dataset: str, args: argparse.Namespace) -> list[str]:
    """The dataset's default overrides, then ``--override`` values (``cifar10:train.epochs=8``: that dataset only)."""
    mine = [o.split(":", 1)[1] if ":" in o.split("=", 1)[0] else o for o in args.override
            if ":" not in o.split("=", 1)[0] or o.startswith(f"{dataset}:")]  # fmt: skip
    return [*DATASETS[dataset][2], *mine]


def victim(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Data, trained victim and the attacked images (first N correctly classified test images)."""
    cfg = config(dataset, args)
    model_cfg = DATASETS[dataset][1]
    device = resolve_device(args.device)
    data = instantiate(cfg.dataset)
    home = advsuite_home(cfg.paths.home)
    model = load_model(cfg.model, data, recipe=cfg.train, device=device, cache_dir=home / "zoo", seed=args.seed)
    pool_x, pool_y = as_tensors(data.test, max(20 * args.images, 500))
    correct = (model.predict(pool_x, 512) == pool_y).nonzero().squeeze(1)[: args.images]
    x, y = pool_x[correct], pool_y[correct]
    targets = choose_targets(y, data.num_classes, "random", args.seed)
    skip = int(correct[-1]) + 1
    starts = starting_images(model, data, targets, skip, args.seed, 512)
    acc = model.info.get("clean_accuracy")
    print(f"{dataset}: victim {model_cfg} ({model.info.get('source')}), clean accuracy {acc}, {len(x)} images")
    return {"cfg": cfg, "data": data, "model": model, "home": home, "x": x, "y": y, "targets": targets,
            "starts": starts, "indices": correct.tolist(), "accuracy": acc}  # fmt: skip


def build_attack(method: str, v: dict[str, Any], mode: str, budget: int, args: argparse.Namespace) -> tuple[Any, Any]:
    """The method's attack from its config, prepared (priors loaded) as ``task=evaluate`` does."""
    overrides = [*METHODS[method], f"attack.budget={budget}", f"attack.targeted={mode == 'targeted'}"]
    cfg = config(v["data_key"], args, *overrides, f"attack.verbose={args.progress}")
    attack = instantiate(cfg.attack)
    model = v["model"]
    arch = model.info.get("arch")
    attack.prepare(PrepareContext(v["data"], model.device, v["home"] / "zoo", args.seed, True, arch and str(arch)))
    return attack, OmegaConf.to_container(cfg.attack, resolve=True)


# ----------------------------------------------------------------------------------- one run


def run_method(method: str, v: dict[str, Any], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Attack, time, read the traces at the budgets, re-check every returned point."""
    foolbox = method.startswith("fb_")
    n = min(args.fb_images, len(v["x"])) if foolbox else len(v["x"])
    budget = args.fb_budget if foolbox else args.budget
    attack, config = build_attack(method, v, mode, budget, args)
    model = v["model"]
    x, y = v["x"][:n].to(model.device), v["y"][:n].to(model.device)
    targets = v["targets"][:n].to(model.device) if mode == "targeted" else None
    starts = v["starts"][:n].to(model.device) if mode == "targeted" else None
    oracle = LabelOracle(model, n, budget, attack.max_batch)
    start = time.perf_counter()
    result = attack(oracle, x, y, targets=targets, starting_points=starts)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    wall = time.perf_counter() - start
    recheck = is_adversarial(model.predict(result.x_adv, len(x)).to(model.device), y, targets)
    claimed = result.success.bool()
    budgets = sorted({b for b in BUDGETS if b <= budget} | {budget})
    grid = torch.tensor(budgets, dtype=torch.float64)
    l2 = [distance_at_queries(t.reshape(-1, 2), grid).tolist() for t in result.trace]
    total = int(oracle.n_queries.sum())
    run = {
        "dataset": v["data_key"], "mode": mode, "method": method, "seed": args.seed,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": describe_machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(model.device),
        "victim": DATASETS[v["data_key"]][1], "victim_overrides": victim_overrides(v["data_key"], args),
        "victim_accuracy": v["accuracy"], "attack_config": config, "budget": budget, "budgets": budgets,
        "d": int(x[0].numel()), "images": v["indices"][:n], "targets": None if targets is None else targets.tolist(),
        "l2": l2, "queries": oracle.n_queries.tolist(), "claimed": claimed.tolist(), "recheck": recheck.tolist(),
        "flips": int((claimed & ~recheck).sum()), "wall_s": wall, "forward_s": oracle.forward_seconds,
        "n_calls": oracle.n_calls, "total_queries": total,
    }  # fmt: skip
    run["summary"] = {str(b): summary(run, b, DATASETS[v["data_key"]][3]) for b in budgets} | speed(run)
    return run


# ----------------------------------------------------------------------------------- statistics


def mse_at(run: dict[str, Any], budget: int, n: int | None = None) -> np.ndarray:
    """Per-image MSE at ``budget`` (no adversarial yet: 1, the largest MSE in [0, 1])."""
    k = run["budgets"].index(budget)
    l2 = np.array([row[k] for row in run["l2"][:n]], dtype=float)
    return np.where(np.isfinite(l2), l2**2 / run["d"], 1.0)


def gmean(a: np.ndarray) -> float:
    return float(np.exp(np.log(np.maximum(a, 1e-30)).mean())) if len(a) else math.nan


def summary(run: dict[str, Any], budget: int, thresholds: tuple[float, float]) -> dict[str, float]:
    mse = mse_at(run, budget)
    l2 = np.sqrt(mse * run["d"])
    out = {"median_mse": float(np.median(mse)), "gmean_mse": gmean(mse), "median_l2": float(np.median(l2))}
    out["gmean_l2"] = gmean(l2)
    for tau in thresholds:
        out[f"asr@{tau:g}"] = float((mse <= tau).mean())
    return out


def speed(run: dict[str, Any]) -> dict[str, float]:
    q = max(run["total_queries"], 1)
    return {"s_per_1k": run["wall_s"] / q * 1000, "forward_share": run["forward_s"] / max(run["wall_s"], 1e-12),
            "rows_per_call": q / max(run["n_calls"], 1)}  # fmt: skip


def paired(a: dict[str, Any], b: dict[str, Any], budget: int) -> tuple[np.ndarray, np.ndarray] | None:
    """MSE of a and b at ``budget`` on their common images (the same list prefix), or None."""
    if budget not in a["budgets"] or budget not in b["budgets"]:
        return None
    n = min(len(a["images"]), len(b["images"]))
    if a["images"][:n] != b["images"][:n] or (a["targets"] or [])[:n] != (b["targets"] or [])[:n]:
        return None
    return mse_at(a, budget, n), mse_at(b, budget, n)


def signed_rank(a: np.ndarray, b: np.ndarray, alternative: str) -> float:
    """One-sided paired Wilcoxon p-value on log MSE (a vs b); 1.0 when every pair ties."""
    diff = np.log(np.maximum(a, 1e-30)) - np.log(np.maximum(b, 1e-30))
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(diff, alternative=alternative).pvalue)


# ----------------------------------------------------------------------------------- report


def fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"


def table(runs: dict[str, dict[str, Any]], dataset: str, mode: str) -> list[str]:
    thresholds = DATASETS[dataset][3]
    head = "| method | images | queries | median MSE | gmean MSE | median L2 | gmean L2 | " + " | ".join(
        f"ASR MSE≤{t:g}" for t in thresholds
    )
    lines = [head + " | s / 1k q | forward share | rows / call | flips |", "|---" * 13 + "|"]
    for method in METHODS:
        run = runs.get(f"{dataset}/{mode}/{method}")
        if run is None:
            continue
        sp = speed(run)
        for i, budget in enumerate(run["budgets"]):
            s = summary(run, budget, thresholds)
            first = [method, str(len(run["images"]))] if i == 0 else ["", ""]
            tail = [fmt(sp["s_per_1k"]), f"{sp['forward_share']:.0%}", f"{sp['rows_per_call']:.0f}"]
            tail = [*tail, str(run["flips"])] if i == 0 else ["", "", "", ""]
            cells = [*first, f"{budget:,}", *(fmt(s[k]) for k in ("median_mse", "gmean_mse", "median_l2", "gmean_l2"))]
            cells += [f"{s[f'asr@{t:g}']:.0%}" for t in thresholds] + tail
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def crosscheck(runs: dict[str, dict[str, Any]], dataset: str, mode: str) -> list[str]:
    """native HSJA vs per-image foolbox HSJA (MSE within ±10%, faster), and foolbox batched vs per-image."""
    key = f"{dataset}/{mode}/"
    hsja, fbh, fbb = (runs.get(key + m) for m in ("hsja", "fb_hsja", "fb_hsja_batched"))
    lines = []
    for budget in sorted({b for r in (hsja, fbh, fbb) if r for b in r["budgets"] if b <= 5000}):
        if hsja and fbh and (p := paired(hsja, fbh, budget)):
            r = np.median(p[0]) / np.median(p[1])
            ok = "PASS" if abs(r - 1) <= 0.1 else "FAIL"
            lines.append(f"- {budget:,} q: native HSJA / foolbox HSJA (per image) median MSE = {r:.2f} "
                         f"on {len(p[0])} images (target within ±10%: {ok})")  # fmt: skip
        if fbh and fbb and (p := paired(fbb, fbh, budget)):
            r = np.median(p[0]) / np.median(p[1])
            lines.append(f"- {budget:,} q: foolbox HSJA batched / per image median MSE = {r:.2f} (finding)")
    if hsja and fbh:
        r = speed(hsja)["s_per_1k"] / speed(fbh)["s_per_1k"]
        lines.append(f"- time per query, native HSJA / foolbox HSJA (per image) = {r:.2f} "
                     f"(target < 1: {'PASS' if r < 1 else 'FAIL'})")  # fmt: skip
    return lines


def versus(runs: dict[str, dict[str, Any]], dataset: str, mode: str, baseline: str) -> list[str]:
    """Each challenger against an HSJA baseline: gmean MSE ratio and one-sided paired Wilcoxon p per budget.

    Better: lower with p < 0.05 at every budget below 10k and not significantly higher at 10k.
    """
    base = runs.get(f"{dataset}/{mode}/{baseline}")
    if base is None:
        return []
    binding = (dataset, mode) == ("cifar10", "targeted")  # where the papers' claim is a target
    lines, best_1k = [], math.inf
    for method in (*CHALLENGERS, *OTHERS):
        run = runs.get(f"{dataset}/{mode}/{method}")
        if run is None:
            continue
        cells, verdict = [], True
        for budget in sorted(set(run["budgets"]) & set(base["budgets"])):
            if (p := paired(run, base, budget)) is None:
                continue
            ratio = gmean(p[0]) / gmean(p[1])
            if budget < 10000:  # lower, significantly
                p_val = signed_rank(*p, "less")
                verdict &= ratio < 1 and p_val < 0.05
            else:  # no worse: not significantly higher
                p_val = signed_rank(*p, "greater")
                verdict &= ratio <= 1 or p_val >= 0.05
            best_1k = min(best_1k, ratio) if budget == 1000 and method in CHALLENGERS else best_1k
            cells.append(f"{budget:,} {ratio:.2f} (p={p_val:.2g})")
        if not cells:
            continue
        word = ("PASS" if verdict else "FAIL") if binding and method in CHALLENGERS else ("yes" if verdict else "no")
        lines.append(f"- {method} / {baseline} gmean MSE: " + ", ".join(cells) + f" -> {word}")
    if math.isfinite(best_1k):
        ok = ("PASS" if best_1k <= 0.5 else "FAIL") if binding else ("yes" if best_1k <= 0.5 else "no")
        lines.append(f"- best challenger at 1k: {1 / best_1k:.2f}x lower gmean MSE than {baseline} (target ≥ 2x: {ok})")
    return lines


def compact(runs: dict[str, dict[str, Any]], dataset: str, mode: str, baseline: str = "hsja") -> list[str]:
    """One row per method: gmean MSE per budget and its ratio to ``baseline`` with the one-sided Wilcoxon p."""
    base = runs.get(f"{dataset}/{mode}/{baseline}")
    budgets = " / ".join(f"{b // 1000}k" for b in BUDGETS)
    lines = [f"| method | images | gmean MSE {budgets} | vs {baseline} at {budgets} (one-sided p) | flips |",
             "|---|---|---|---|---|"]  # fmt: skip
    for method in METHODS:
        run = runs.get(f"{dataset}/{mode}/{method}")
        if run is None:
            continue
        mses, ratios = [], []
        for budget in BUDGETS:
            mses.append(f"{gmean(mse_at(run, budget)):.2e}" if budget in run["budgets"] else "–")
            p = paired(run, base, budget) if base is not None and method != baseline else None
            if p is None:
                ratios.append("–")
                continue
            ratio = gmean(p[0]) / gmean(p[1])
            ratios.append(f"{ratio:.2f} ({signed_rank(*p, 'less' if ratio < 1 else 'greater'):.1g})")
        vs = "baseline" if method == baseline else " / ".join(ratios)
        lines.append(f"| {method} | {len(run['images'])} | {' / '.join(mses)} | {vs} | {run['flips']} |")
    return lines


def compact_report(runs: dict[str, dict[str, Any]]) -> str:
    out = []
    for dataset in DATASETS:
        for mode in ("targeted", "untargeted"):
            if any(k.startswith(f"{dataset}/{mode}/") for k in runs):
                out += [f"#### {dataset}, {mode}", "", *compact(runs, dataset, mode), ""]
    return "\n".join(out)


def report(runs: dict[str, dict[str, Any]], only: set[tuple[str, str]] | None = None) -> str:
    out = []
    for dataset in DATASETS:
        for mode in ("untargeted", "targeted"):
            if (only and (dataset, mode) not in only) or not any(k.startswith(f"{dataset}/{mode}/") for k in runs):
                continue
            some = next(r for k, r in runs.items() if k.startswith(f"{dataset}/{mode}/"))
            out += [f"### {dataset}, {mode} (victim accuracy {fmt(some['victim_accuracy'])}, {some['machine']}, "
                    f"{some['date'][:10]})", "", *table(runs, dataset, mode), ""]  # fmt: skip
            checks = crosscheck(runs, dataset, mode)
            checks += versus(runs, dataset, mode, "hsja_qeba") + versus(runs, dataset, mode, "hsja")
            present = [(m, runs[f"{dataset}/{mode}/{m}"]) for m in METHODS if f"{dataset}/{mode}/{m}" in runs]
            shares = [f"{m} {speed(r)['forward_share']:.0%}" for m, r in present]
            checks.append("- forward share of wall time (target ≥ 80%): " + ", ".join(shares))
            out += [*checks, ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------- main


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        action="append",
        help="mnist | cifar10 | cifar10_convnet | cifar10_64 (repeatable or comma list; default mnist, cifar10)",
    )
    parser.add_argument("--mode", action="append", help="targeted | untargeted (default both)")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--budget", type=int, default=10000, help="queries per image (native methods)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--fb-images", type=int, default=20, help="foolbox methods attack the first N images")
    parser.add_argument("--fb-budget", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override, e.g. train.epochs=5 or cifar10:train.epochs=8"
    )
    parser.add_argument("--progress", action="store_true", help="attack progress bars")
    parser.add_argument("--json", type=Path, default=Path("bench/results/boundary.json"))
    parser.add_argument("--markdown", action="store_true", help="only print the report from --json")
    parser.add_argument("--compact", action="store_true", help="only print one gmean-MSE row per method from --json")
    args = parser.parse_args()
    split = lambda values, default: [v for arg in (values or [default]) for v in arg.split(",") if v]  # noqa: E731
    args.dataset, args.mode = split(args.dataset, "mnist,cifar10"), split(args.mode, "untargeted,targeted")
    args.methods = split([args.methods], "")
    for value, allowed in ((args.dataset, DATASETS), (args.mode, ("targeted", "untargeted")), (args.methods, METHODS)):
        if bad := [v for v in value if v not in allowed]:
            parser.error(f"unknown {bad}; choose from {list(allowed)}")
    return args


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The recorded runs of ``path`` (empty if it does not exist yet)."""
    return json.loads(path.read_text())["runs"] if path.exists() else {}


def main() -> None:
    args = parse()
    runs = load_runs(args.json)
    if args.markdown:
        print(report(runs))
        return
    if args.compact:
        print(compact_report(runs))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    done: set[tuple[str, str]] = set()
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        for dataset in args.dataset:
            v = victim(dataset, args) | {"data_key": dataset}
            for mode in args.mode:
                for method in args.methods:
                    print(f"{dataset}/{mode}/{method}: running")
                    try:
                        run = run_method(method, v, mode, args)
                    except Exception as exc:  # e.g. a prior that does not build yet: report, go on
                        if method not in PRIOR_METHODS:
                            raise
                        print(f"{dataset}/{mode}/{method}: skipped, {type(exc).__name__}: {exc}")
                        continue
                    sp = speed(run)
                    print(f"  {run['wall_s']:.1f} s, {sp['s_per_1k']:.3f} s / 1k queries, "
                          f"forward {sp['forward_share']:.0%}, {sp['rows_per_call']:.0f} rows / call, "
                          f"flips {run['flips']}")  # fmt: skip
                    # re-read before writing: another bench process may have added runs meanwhile
                    runs = {**load_runs(args.json), f"{dataset}/{mode}/{method}": run}
                    done.add((dataset, mode))
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps({"runs": runs}, indent=1))
    print()
    print(report(runs, done) if done else "nothing ran")
    if done:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
