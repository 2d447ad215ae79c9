"""Evasive, universal, patch and reversible attacks on CIFAR-10: each paper's claim against its baseline.

Victim: zoo ``smallcnn`` on ``dataset=cifar10_npz`` with the default train recipe (cached under
``$ADVSUITE_HOME/zoo``); the ``diva`` section attacks zoo ``convnet`` trained 15 epochs (82.4% clean accuracy;
the paper's claim needs a victim of at least 80%). Every attack is built from advsuite's own Hydra config,
prepared as ``task=evaluate`` prepares it, and run through :func:`advsuite.evaluation.evaluate` on the first
``--images`` test images (it attacks the correctly classified ones), so the numbers are the metrics a user of
the CLI gets.

Sections (``--section``, default all):

- ``diva``: DIVA vs PGD on the adapted model (``attack=diva`` / ``diva_pgd``), ε 8/255, 20 steps of 1/255, for
  int8 QAT and post-training quantisation and magnitude / structured pruning at 50, 70 and 90% sparsity (QAT and
  pruning fine-tuned 300 steps), white-box (DIVA at c = 1, 3, 10) and semi-black-box (int8). Each adaptation's
  clean disagreement with the original is reported. Checks: evasive success DIVA / PGD ≥ 1.9 and adapted success
  PGD − DIVA ≤ 5 points (the paper: 1.9–4.2× and 1.7–3.6 points), and the ratio at equal attack success (the
  most evasive c whose adapted success is within 5 points of PGD's).
- ``uap``: ε 10/255; ``uap_datafree`` (prior none, range, data; ``objective=divergence`` with no prior and the
  data prior), ``uap_sgd`` (data-dependent) and ``uap_random``, each also measured on the transfer models
  ``cifarcnn`` and ``resnet18``. Checks: best data-free fooling rate ≥ 80% of ``uap_sgd``'s (white-box and
  transferred); data-free / random.
- ``patch``: ``patch_gan`` in latent vs pixel space (surrogates ``auto``: resnet18 and cifarcnn for a smallcnn
  victim), size 0.1, the victim as the black box; the white-box ``attack=patch`` at the same size as a reference.
  Check: latent transfer success > pixel's (the paper's claim).
- ``reversible``: ``attack=reversible_patch``. Checks: ``restored_exact`` = 1; RAE success within 5 points of
  the plain patch's.

    export ADVSUITE_DATA=/work/shared/data
    python bench/evasion.py                                  # everything, 500 images (~15 min on 2 CPU cores)
    python bench/evasion.py --section uap --override 'uap/datafree*:attack.max_iter=1000'
    python bench/evasion.py --section patch --override patch:attack.steps=100
    python bench/evasion.py --section diva --images 300      # the recorded DIVA rows (~20 min; convnet training
                                                             # ~13 min more the first time)
    python bench/evasion.py --section diva --images 20 --json /tmp/evasion-smoke.json \\
        --override diva:attack.finetune_steps=5 --override diva:attack.distill_steps=10   # smoke test
    python bench/evasion.py --markdown                       # the docs/benchmarks.md section, from the JSON

``--override PATTERN:KEY=VALUE`` is a Hydra override of the attack configs whose ``section/method`` matches the
glob ``PATTERN`` (a bare section name matches all its methods; no pattern: every method). ``--no-transfer``
skips the transfer models (the ``uap`` runs are then white-box only, the ``patch_gan`` runs are skipped), for
when ``cifarcnn``/``resnet18`` are not in the zoo cache and should not be trained now.

Queries: the universal attacks (uap, patches) spend their fitting queries once (``fit_queries``,
``patch_fit_queries``); the per-image application queries are the pipeline's ``median_queries``. Wall time is
the attack's ``prepare`` (loading transfer models, surrogates, generators) plus the ``evaluate`` call, which
includes fitting and the extra metrics.

Results accumulate in ``--json`` (default bench/results/evasion.json), keyed ``section/method`` (a rerun replaces
its key), written after every run.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advsuite.attack import PrepareContext, attack_options
from advsuite.attacks.patch import patch_side
from advsuite.configs import plugin_overrides
from advsuite.data import as_tensors
from advsuite.device import provenance, resolve_device
from advsuite.evaluation import evaluate
from advsuite.models.archs import build_classifier
from advsuite.models.surrogates import reference_spec
from advsuite.models.zoo import cache_key, load_model, parse_spec, zoo_entry
from advsuite.paths import advsuite_home
from advsuite.seeding import seed_everything
from advsuite.training import Recipe

VICTIM = ["dataset=cifar10_npz"]
DEFAULT_MODEL = ["model=smallcnn"]
#: a section's own victim (model and recipe overrides) where the default one is too weak for its claim
SECTION_VICTIM: dict[str, list[str]] = {
    # DIVA needs a victim with >= 80% clean accuracy (Hao et al. attack 90%+ ImageNet/face models)
    "diva": ["model=convnet", "train.epochs=15"],
}
TRANSFER = ("cifarcnn", "resnet18")
EPS10 = "attack.eps=0.0392156862745098"  # 10/255, the configs' default, stated so the record says it
#: section -> method -> attack config overrides
#: QAT and pruned fine-tuning: 300 Adam steps of 64 images (about one pass over the 2,000 calibration images
#: ten times; the authors trained for epochs, see attacks/edge/adapt.py)
FINETUNE = "attack.finetune_steps=300"
#: DIVA's edge adaptations: name -> attack overrides (int8 QAT and post-training; pruning with fine-tuning)
ADAPTATIONS: dict[str, list[str]] = {
    "int8": ["attack.adaptation=int8", FINETUNE],
    "int8_ptq": ["attack.adaptation=int8_ptq"],
    **{f"prune{p}": ["attack.adaptation=prune", f"attack.sparsity=0.{p}", FINETUNE] for p in (5, 7, 9)},
    **{f"structured{p}": ["attack.adaptation=prune_structured", f"attack.sparsity=0.{p}", FINETUNE] for p in (5, 7, 9)},
}
SECTIONS: dict[str, dict[str, list[str]]] = {
    "diva": {
        f"{adapt}/whitebox/{method}": ["attack=diva" if method == "diva" else "attack=diva_pgd", *how]
        for adapt, how in ADAPTATIONS.items()
        for method in ("diva", "pgd")
    }
    | {  # the semi-black-box setting: the attacker distils a surrogate of the original from the edge copy
        f"int8/semi_blackbox/{method}": [
            "attack=diva" if method == "diva" else "attack=diva_pgd",
            *ADAPTATIONS["int8"],
            "attack.setting=semi_blackbox",
        ]
        for method in ("diva", "pgd")
    }
    | {  # the trade-off knob: a larger c weighs fooling the adapted model more (to match PGD's success)
        f"{adapt}/whitebox/diva_c{c}": ["attack=diva", *ADAPTATIONS[adapt], f"attack.c={c}"]
        for adapt in ADAPTATIONS
        for c in (3, 10)
    },
    "uap": {
        "datafree": ["attack=uap_datafree", EPS10, "attack.prior=none"],
        "datafree_range": ["attack=uap_datafree", EPS10, "attack.prior=range"],
        "datafree_data": ["attack=uap_datafree", EPS10, "attack.prior=data"],
        "divergence": ["attack=uap_datafree", EPS10, "attack.objective=divergence", "attack.prior=none"],
        "divergence_data": ["attack=uap_datafree", EPS10, "attack.objective=divergence", "attack.prior=data"],
        "sgd": ["attack=uap_sgd", EPS10],
        "random": ["attack=uap_random", EPS10],
    },
    "patch": {
        "latent": ["attack=patch_gan", "attack.space=latent", "attack.size=0.1"],
        "pixel": ["attack=patch_gan", "attack.space=pixel", "attack.size=0.1"],
        "whitebox": ["attack=patch", "attack.size=0.1"],
    },
    "reversible": {"reversible_patch": ["attack=reversible_patch"]},
}
#: the truly data-free variants (the data prior is GD-UAP's reference, not data-free)
DATA_FREE = ("datafree", "datafree_range", "divergence")
#: runs that need the transfer models / surrogates
TRANSFER_RUNS = ("patch/latent", "patch/pixel")


# ----------------------------------------------------------------------------------- setup


def victim_overrides(section: str) -> list[str]:
    """The dataset, model and recipe overrides of ``section``'s victim."""
    return [*VICTIM, *SECTION_VICTIM.get(section, DEFAULT_MODEL)]


def config(args: argparse.Namespace, section: str, *extra: str) -> Any:
    """advsuite's root config for ``section``'s CIFAR-10 victim, with ``extra`` overrides."""
    base = [*victim_overrides(section), f"seed={args.seed}", f"verbose={args.progress}"]
    return compose("config", plugin_overrides([*base, *extra]))


def user_overrides(key: str, args: argparse.Namespace) -> list[str]:
    """The ``--override`` values whose pattern matches ``section/method`` (a bare section matches its methods)."""
    out = []
    for item in args.override:
        head = item.split("=", 1)[0]
        if ":" not in head:
            out.append(item)
            continue
        pattern, value = item.split(":", 1)
        if fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key, pattern + "/*"):
            out.append(value)
    return out


def victim(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """Data, ``section``'s trained victim and the first ``--images`` test images."""
    cfg = config(args, section)
    if cfg.paths.data is None:
        sys.exit("set ADVSUITE_DATA to the folder that holds cifar10-jpeg/ (e.g. /work/shared/data)")
    data = instantiate(cfg.dataset)
    home = advsuite_home(cfg.paths.home)
    device = resolve_device(args.device)
    model = load_model(cfg.model, data, recipe=cfg.train, device=device, cache_dir=home / "zoo", seed=args.seed)
    x, y = as_tensors(data.test, args.images)
    acc = model.info.get("clean_accuracy")
    name = str(cfg.model.name)
    print(f"victim {name} ({model.info.get('source')}), clean accuracy {acc}, {len(x)} test images")
    return {
        "name": name,
        "overrides": victim_overrides(section),
        "data": data,
        "model": model,
        "home": home,
        "x": x,
        "y": y,
        "accuracy": acc,
        "batch_size": int(cfg.batch_size),
    }


def reference_entry(name: str, recipe: dict[str, Any], v: dict[str, Any], seed: int) -> Path:
    """The ``meta.json`` of the zoo cache entry ``load_model`` uses for ``name`` with ``recipe`` overrides."""
    spec = parse_spec(reference_spec(name, recipe))
    data = v["data"]
    built = build_classifier(spec["arch"], data, name=spec["name"], amp=spec["amp"], **spec["kwargs"])
    adaptation = cast(dict[str, Any], built.info["adaptation"])
    key = cache_key(spec, data, Recipe.coerce(None, spec["recipe_overrides"]), adaptation, seed)
    return zoo_entry(v["home"] / "zoo", data, spec["arch"], key).meta


def references(attack: Any, victim_name: str) -> tuple[list[str], dict[str, Any]]:
    """The zoo models a run loads besides the victim (transfer models, surrogates) and their recipe overrides."""
    from advsuite.attacks.patch.transfer import resolve_surrogates

    if getattr(attack, "transfer_models", None):
        return list(attack.transfer_models), attack.transfer_recipe
    if hasattr(attack, "surrogate_recipe"):
        names = resolve_surrogates(attack.surrogates, victim_name)
        return [n for n in names if isinstance(n, str)], attack.surrogate_recipe
    return [], {}


def warn_training(attack: Any, v: dict[str, Any], args: argparse.Namespace) -> None:
    """Say so before a transfer model or surrogate is trained on demand (minutes for resnet18)."""
    names, recipe = references(attack, v["name"])
    for name in names:
        if not reference_entry(name, recipe, v, args.seed).is_file():
            print(f"  note: {name} {recipe} is not in the zoo cache: training it now (--no-transfer skips it)")


def reference_accuracy(attack: Any, v: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Clean test accuracy of each loaded transfer model / surrogate, from its zoo cache entry."""
    names, recipe = references(attack, v["name"])
    out = {}
    for name in names:
        meta = reference_entry(name, recipe, v, args.seed)
        out[name] = json.loads(meta.read_text()).get("clean_accuracy") if meta.is_file() else None
    return out


# ----------------------------------------------------------------------------------- one run


def plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of an attack's info: scalars, short lists, dicts; long traces and tensors dropped."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dict) and depth < 3:
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and len(value) <= 20 and depth < 3:
        return [plain(v, depth + 1) for v in value]
    return None


def details(attack: Any, model: Any) -> dict[str, Any]:
    """What fitting/building cost and found (adapted models, δ, patches), from the attack's caches."""
    if hasattr(attack, "edge_models"):
        return plain(attack.edge_models(model).info)
    if hasattr(attack, "fit_info"):
        return plain(attack.fit_info(model))
    log = getattr(attack, "fit_log", None) or {}
    return {f"{side}/{target}": plain(entry) for (side, target), entry in log.items()}


def run_method(section: str, method: str, v: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    key = f"{section}/{method}"
    overrides = list(SECTIONS[section][method])
    if section == "uap" and not args.no_transfer:
        overrides.append(f"attack.transfer_models=[{','.join(TRANSFER)}]")
    overrides += user_overrides(key, args)
    try:
        cfg = config(args, section, *overrides)
    except ConfigCompositionException as exc:  # e.g. an --override key that this method's config lacks
        raise SystemExit(
            f"{key}: {exc}\n(overrides: {overrides}; prefix an override with a pattern to limit it)"
        ) from None
    attack = instantiate(cfg.attack)
    model = v["model"]
    warn_training(attack, v, args)
    seed_everything(args.seed)  # as task=evaluate does before it builds anything
    start = time.perf_counter()
    context = PrepareContext(v["data"], model.device, v["home"] / "zoo", args.seed, args.progress, v["name"])
    attack.prepare(context)
    prepared = time.perf_counter()
    ev = evaluate(model, attack, v["x"], v["y"], batch_size=v["batch_size"], verbose=args.progress)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    end = time.perf_counter()
    return {
        "section": section,
        "method": method,
        "seed": args.seed,
        "overrides": overrides,
        **provenance(),
        "device": str(model.device),
        "victim": v["name"],
        "victim_overrides": v["overrides"],
        "victim_accuracy": v["accuracy"],
        "n_images": len(v["x"]),
        # every option the attack ran with (the YAML only lists what it changes from the class defaults)
        "attack_config": {
            **{name: plain(getattr(attack, name)) for name in attack_options(type(attack))},
            **cast(dict[str, Any], OmegaConf.to_container(cfg.attack, resolve=True)),
        },
        "metrics": {k: plain(val) for k, val in ev.metrics.items()},
        "details": details(attack, model),
        "references": reference_accuracy(attack, v, args),
        "prepare_s": prepared - start,
        "evaluate_s": end - prepared,
        "wall_s": end - start,
    }


# ----------------------------------------------------------------------------------- report


def fmt(v: Any, digits: int = 3) -> str:
    """A rate or mean with ``digits`` decimals; ``n/a`` for a missing value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def count(v: Any) -> str:
    return "n/a" if v is None else f"{int(v):,}"


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [row(head), "|---" * len(head) + "|", *(row(r) for r in rows)]


def adaptation_label(config: dict[str, Any]) -> str:
    """``int8 (QAT)``, ``int8 (PTQ)``, ``prune 0.7``, ``structured 0.5``: the edge copy a DIVA run attacked."""
    adapt = config["adaptation"]
    if adapt.startswith("int8"):
        return "int8 (PTQ)" if adapt == "int8_ptq" else "int8 (QAT)"
    return f"{'structured' if adapt == 'prune_structured' else 'prune'} {config['sparsity']:g}"


def diva_report(runs: dict[str, dict[str, Any]]) -> list[str]:
    head = ["adaptation", "clean disagreement", "setting", "method", "both correct", "adapted_success"]
    head += ["evasive_success", "evasive_success_top5", "original fooled", "adapted clean acc", "wall s"]
    rows, checks = [], []
    for method in SECTIONS["diva"]:
        if (r := runs.get(f"diva/{method}")) is None:
            continue
        _, setting, name = method.split("/")
        m = r["metrics"]
        rates = ("adapted_success", "evasive_success", "evasive_success_top5", "success_rate", "adapted_clean_accuracy")
        shown = "PGD" if name == "pgd" else f"DIVA (c={r['attack_config']['c']:g})"
        cells = [adaptation_label(r["attack_config"]), fmt(m.get("clean_disagreement"))]
        cells += [setting.replace("_", "-"), shown, count(m.get("n_both_correct"))]
        rows.append([*cells, *(fmt(m.get(k)) for k in rates), f"{r['wall_s']:.0f}"])
    for method in SECTIONS["diva"]:
        adapt, setting, name = method.split("/")
        d, p = runs.get(f"diva/{method}"), runs.get(f"diva/{adapt}/{setting}/pgd")
        if name != "pgd" and d is not None and p is not None:
            where = (
                f"{adaptation_label(d['attack_config'])}, {setting.replace('_', '-')}, c={d['attack_config']['c']:g}"
            )
            checks += diva_checks(where, d["metrics"], p["metrics"])
    return [*table(head, rows), "", *equal_success(runs), "", *checks]


def equal_success(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Per adaptation (white-box): among the DIVA runs (its c values) whose adapted success is within 5 points of
    PGD's, the most evasive (none within: the closest), and the evasive-success ratio at that matched success."""
    head = ["adaptation", "clean disagreement", "PGD adapted / evasive", "DIVA c", "DIVA adapted / evasive"]
    head += ["gap (points)", "evasive DIVA / PGD"]
    rows = []
    for adapt in ADAPTATIONS:
        p = runs.get(f"diva/{adapt}/whitebox/pgd")
        cands = [r for k, r in runs.items() if k.startswith(f"diva/{adapt}/whitebox/diva")]
        if p is None or not cands:
            continue
        pm = p["metrics"]
        if pm.get("adapted_success") is None:
            continue

        def gap_of(r: dict[str, Any], reference: float = pm["adapted_success"]) -> float:
            return abs((r["metrics"].get("adapted_success") or 0) - reference)

        matched_runs = [r for r in cands if gap_of(r) <= 0.05]
        best = (
            max(matched_runs, key=lambda r: r["metrics"].get("evasive_success") or 0)
            if matched_runs
            else min(cands, key=gap_of)
        )
        dm = best["metrics"]
        gap = 100 * ((dm.get("adapted_success") or 0) - pm["adapted_success"])
        ev_p, ev_d = pm.get("evasive_success") or 0, dm.get("evasive_success") or 0
        ratio = f"{ev_d / ev_p:.2f}x" if ev_p > 0 else ("inf (PGD 0)" if ev_d > 0 else "n/a")
        matched = "" if abs(gap) <= 5 else " (not matched: gap > 5)"
        rows.append([
            adaptation_label(p["attack_config"]),
            fmt(pm.get("clean_disagreement")),
            f"{fmt(pm['adapted_success'])} / {fmt(ev_p)}",
            f"{best['attack_config']['c']:g}",
            f"{fmt(dm.get('adapted_success'))} / {fmt(ev_d)}",
            f"{gap:+.1f}",
            ratio + matched,
        ])  # fmt: skip
    if not rows:
        return []
    return ["At equal attack success (white-box; the paper reports 1.9–4.2x):", "", *table(head, rows)]


def diva_checks(where: str, dm: dict[str, Any], pm: dict[str, Any]) -> list[str]:
    """Evasive success DIVA / PGD ≥ 1.9 and adapted success PGD − DIVA ≤ 5 points (Hao et al.'s claim)."""
    ev_d, ev_p = dm.get("evasive_success"), pm.get("evasive_success")
    ad_d, ad_p = dm.get("adapted_success"), pm.get("adapted_success")
    if ev_d is None or ev_p is None or ad_d is None or ad_p is None:
        return [f"- {where}: not measured (no image that the original and the adapted model both classify correctly)"]
    ratio = ev_d / ev_p if ev_p > 0 else (math.inf if ev_d > 0 else math.nan)
    shown = "n/a (both 0)" if math.isnan(ratio) else "inf (PGD 0)" if math.isinf(ratio) else f"{ratio:.2f}x"
    gap = 100 * (ad_p - ad_d)
    out = [
        f"- {where}: evasive success DIVA / PGD = {fmt(ev_d)} / {fmt(ev_p)} = {shown} "
        f"(target ≥ 1.9x: {pass_fail(ratio >= 1.9)})",
        f"- {where}: adapted success PGD − DIVA = {fmt(ad_p)} − {fmt(ad_d)} = {gap:.1f} points "
        f"(target ≤ 5: {pass_fail(gap <= 5)})",
    ]
    acc_d, acc_p = dm.get("adapted_clean_accuracy"), pm.get("adapted_clean_accuracy")
    if acc_d != acc_p:  # both runs build the adapted model with the same seed: it must be the same model
        out.append(f"- {where}: DIVA and PGD ran on different adapted models (clean {fmt(acc_d)} vs {fmt(acc_p)})")
    return out


def uap_report(runs: dict[str, dict[str, Any]]) -> list[str]:
    present = {m: r for m in SECTIONS["uap"] if (r := runs.get(f"uap/{m}"))}
    names = {k.split(":", 1)[1] for r in present.values() for k in r["metrics"] if k.startswith("fooling_rate:")}
    models = sorted(names)
    head = ["method", "config", "fooling rate (victim)", *(f"fooling rate {n}" for n in models)]
    head += ["transfer fooling rate", "fit queries", "wall s"]
    rows = []
    for method, r in present.items():
        m, c = r["metrics"], r["attack_config"]
        what = f"{c['objective']}, prior {c['prior']}" if "prior" in c else c["_target_"].rsplit(".", 1)[1]
        rates = [fmt(m.get("fooling_rate")), *(fmt(m.get(f"fooling_rate:{n}")) for n in models)]
        tail = [fmt(m.get("transfer_fooling_rate")), count(m.get("fit_queries")), f"{r['wall_s']:.0f}"]
        rows.append([method, what, *rates, *tail])
    checks = []
    for key, label in (("fooling_rate", "white-box"), ("transfer_fooling_rate", "transferred")):
        free = [(val, m) for m, r in present.items() if m in DATA_FREE and (val := r["metrics"].get(key)) is not None]
        if not free:
            continue
        best, name = max(free)
        sgd = present.get("sgd", {}).get("metrics", {}).get(key)
        if sgd is not None:
            ratio = f"{best / sgd:.2f}" if sgd > 0 else "n/a (uap_sgd 0)"
            checks.append(
                f"- {label}: best data-free ({name}) / uap_sgd = {fmt(best)} / {fmt(sgd)} = {ratio} "
                f"(target ≥ 0.80: {pass_fail(best >= 0.8 * sgd)})"
            )
        rnd = present.get("random", {}).get("metrics", {}).get(key)
        if rnd is not None:
            ratio = f"{best / rnd:.1f}x" if rnd > 0 else "n/a (random 0)"
            checks.append(f"- {label}: best data-free ({name}) / uap_random = {fmt(best)} / {fmt(rnd)} = {ratio}")
    return [*table(head, rows), "", *checks]


def patch_report(runs: dict[str, dict[str, Any]]) -> list[str]:
    present = {m: r for m in SECTIONS["patch"] if (r := runs.get(f"patch/{m}"))}
    keys = {k.split("@", 1)[1] for r in present.values() for k in r["metrics"] if k.startswith("surrogate_success@")}
    surrogates = sorted(keys)
    head = ["method", "size (side)", "victim patch_success", *(f"{s} (surrogate, white-box)" for s in surrogates)]
    head += ["fit queries", "wall s"]
    rows = []
    for r in present.values():
        m, c = r["metrics"], r["attack_config"]
        name = f"patch_gan, {c['space']}" if "space" in c else "patch (white-box on the victim)"
        sizes = c["size"] if isinstance(c["size"], list) else [c["size"]]
        size = ", ".join(f"{s:g} ({patch_side(s, 32, 32)}×{patch_side(s, 32, 32)})" for s in sizes)
        rates = [fmt(m.get("patch_success")), *(fmt(m.get(f"surrogate_success@{s}")) for s in surrogates)]
        rows.append([name, size, *rates, count(m.get("patch_fit_queries")), f"{r['wall_s']:.0f}"])
    checks = []
    lat, pix = present.get("latent"), present.get("pixel")
    if lat and pix:
        a, b = lat["metrics"].get("patch_success"), pix["metrics"].get("patch_success")
        if a is not None and b is not None:
            checks.append(
                f"- transfer success latent − pixel = {fmt(a)} − {fmt(b)} = {100 * (a - b):+.1f} points "
                f"(target > 0, the paper's claim: {pass_fail(a > b)})"
            )
    return [*table(head, rows), "", *checks]


def reversible_report(runs: dict[str, dict[str, Any]]) -> list[str]:
    r = runs.get("reversible/reversible_patch")
    if r is None:
        return []
    m = r["metrics"]
    head = ["attacked", "reversible", "not fitting", "restored_exact", "patch_success (RAE)", "plain_patch_success"]
    head += ["plain, same images", "PSNR RAE / plain dB", "payload / capacity bits", "wall s"]
    counts = [count(m.get(k)) for k in ("n_attacked", "n_reversible", "n_not_fitting")]
    rates = [fmt(m.get(k)) for k in ("restored_exact", "patch_success", "plain_patch_success")]
    rates.append(fmt(m.get("plain_patch_success_reversible")))
    psnr = f"{fmt(m.get('psnr_mean'), 1)} / {fmt(m.get('plain_psnr_mean'), 1)}"
    bits = f"{fmt(m.get('payload_bits_mean'), 0)} / {fmt(m.get('capacity_bits_mean'), 0)}"
    exact, rae, base = m.get("restored_exact"), m.get("patch_success"), m.get("plain_patch_success")
    checks = [f"- restored_exact = {fmt(exact)} (target 1.000: {pass_fail(exact == 1.0)})"]
    if rae is not None and base is not None:
        gap = 100 * (base - rae)
        checks.append(
            f"- plain_patch_success − patch_success (RAE) = {fmt(base)} − {fmt(rae)} = {gap:.1f} points "
            f"(target within 5: {pass_fail(abs(gap) <= 5)})"
        )
    return [*table(head, [[*counts, *rates, psnr, bits, f"{r['wall_s']:.0f}"]]), "", *checks]


TITLES = {
    "diva": (
        "DIVA vs PGD on the adapted model (ε 8/255, 20 steps of 1/255)",
        "DIVA's numbers count the attacked images that the original, the deployed adapted model and (semi-black-box) "
        "the distilled surrogate all classify correctly (`both correct`). `original fooled` is the pipeline's "
        "`success_rate`: the original misclassifies too, so a server re-checking with it would notice. Wall time "
        "includes building the adapted model (and the surrogate).",
        diva_report,
    ),
    "uap": (
        "Universal perturbations (ε 10/255)",
        "Fooling rate: label-free, `argmax f(x + δ) ≠ argmax f(x)` over all evaluated images (misclassified ones "
        "too); the transfer fooling rate is its mean over the transfer models, measured with the same δ. Fit "
        "queries are spent once; applying δ costs one query per image.",
        uap_report,
    ),
    "patch": (
        "Transferable patches: generator manifold vs pixels (victim as black box)",
        "`patch_success`: the victim's prediction changes on the attacked images (one label query each). The "
        "surrogate columns are the surrogates' white-box success on the same patched images, counted over the "
        "attacked images that surrogate also classifies correctly.",
        patch_report,
    ),
    "reversible": (
        "Reversible adversarial examples (patch 0.05 of the image)",
        "`patch_success` is over the reversible examples (RAE); `plain_patch_success` over the plain patched "
        "images of all attacked images, and `plain, same images` over the reversible ones.",
        reversible_report,
    ),
}


def victim_line(runs: dict[str, dict[str, Any]], section: str) -> list[str]:
    """The victim(s) a section's runs attacked, with their overrides, clean accuracy and N images."""
    seen = {
        (
            r.get("victim", "smallcnn"),
            " ".join(r.get("victim_overrides", [*VICTIM, *DEFAULT_MODEL])),
            r["victim_accuracy"],
            r["n_images"],
        )
        for key, r in runs.items()
        if key.startswith(f"{section}/")
    }
    lines = [
        f"Victim: zoo `{name}` (`{how}`), clean accuracy {fmt(acc)}; first {n} test images."
        for name, how, acc, n in sorted(seen)
    ]
    return [*lines, ""]


def reference_line(runs: dict[str, dict[str, Any]], section: str) -> list[str]:
    """The transfer models / surrogates of a section with their clean accuracy and recipe."""
    seen: dict[str, Any] = {}
    recipe = None
    for key, r in runs.items():
        if key.startswith(f"{section}/") and r.get("references"):
            seen.update(r["references"])
            config = r["attack_config"]
            recipe = config.get("transfer_recipe") or config.get("surrogate_recipe")
    if not seen:
        return []
    models = ", ".join(f"`{n}` {fmt(acc)}" for n, acc in seen.items())
    return [
        f"Transfer models / surrogates (zoo, recipe overrides `{json.dumps(recipe)}`), clean accuracy: {models}.",
        "",
    ]


def report(runs: dict[str, dict[str, Any]]) -> str:
    if not runs:
        return "nothing recorded yet"
    latest = max(runs.values(), key=lambda r: r["date"])
    commands = sorted({r["command"] for r in runs.values()})
    out = [
        "## Evasion attacks (CIFAR-10)",
        "",
        "Each attack runs through `advsuite.evaluation.evaluate` (the `task=evaluate` path) on the first "
        "N test images of `cifar10_npz` (each section says its N and its victim); the victim is attacked on the "
        "images it classifies correctly. Attack configs are the packaged defaults plus the overrides recorded in "
        "the JSON.",
        "",
        "- **Command:** " + "; ".join(f"`{c}`" for c in commands),
        f"- **Machine:** {latest['machine']}, {latest['threads']} torch threads, torch {latest['torch']}.",
        f"- **Date:** {latest['date'][:10]}.",
        "",
    ]
    for section, (title, note, render) in TITLES.items():
        if any(k.startswith(f"{section}/") for k in runs):
            out += [f"### {title}", "", *victim_line(runs, section), note, "", *reference_line(runs, section)]
            out += [*render(runs), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------- main


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help=f"{', '.join(SECTIONS)} (repeatable or comma list)")
    parser.add_argument("--methods", default="*", help="comma list of globs over section/method, e.g. 'uap/sgd'")
    parser.add_argument("--images", type=int, default=500, help="first N test images (the correct ones are attacked)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="[PATTERN:]KEY=VALUE for the attack configs, e.g. patch:attack.steps=100",
    )
    parser.add_argument("--no-transfer", action="store_true", help="skip transfer models and patch_gan surrogates")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--json", type=Path, default=Path("bench/results/evasion.json"))
    parser.add_argument("--markdown", action="store_true", help="only print the report from --json")
    args = parser.parse_args()
    args.section = [s for arg in (args.section or [",".join(SECTIONS)]) for s in arg.split(",") if s]
    if bad := [s for s in args.section if s not in SECTIONS]:
        parser.error(f"unknown sections {bad}; choose from {list(SECTIONS)}")
    args.methods = [p for p in args.methods.split(",") if p]
    if args.images < 1:
        parser.error("--images must be at least 1")
    return args


def main() -> None:
    args = parse()
    runs: dict[str, dict[str, Any]] = json.loads(args.json.read_text())["runs"] if args.json.exists() else {}
    if args.markdown:
        print(report(runs))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    total = time.perf_counter()
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        victims: dict[tuple[str, ...], dict[str, Any]] = {}
        for section in args.section:
            for stale in [
                k for k in runs if k.split("/", 1)[0] == section and k.split("/", 1)[1] not in SECTIONS[section]
            ]:
                del runs[stale]  # a method this bench no longer runs (renamed, or its protocol changed)
            for method in SECTIONS[section]:
                key = f"{section}/{method}"
                if not any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, p + "/*") for p in args.methods):
                    continue
                if args.no_transfer and key in TRANSFER_RUNS:
                    print(f"{key}: skipped (--no-transfer)")
                    continue
                who = tuple(victim_overrides(section))
                v = victims[who] = victims.get(who) or victim(args, section)
                print(f"{key}: running")
                run = runs[key] = run_method(section, method, v, args)
                m = run["metrics"]
                print(
                    f"  {run['wall_s']:.1f} s (prepare {run['prepare_s']:.1f} s), {m['n_attacked']} attacked, "
                    f"success_rate {fmt(m['success_rate'])}"
                )
                args.json.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.json.with_suffix(".tmp")
                tmp.write_text(json.dumps({"runs": runs}, indent=1))
                tmp.replace(args.json)
    print(f"\ntotal {time.perf_counter() - total:.0f} s\n")
    print(report(runs))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
