"""Face-verification patches on the offline stand-in: latent (G(w)) vs pixel patches, transferred to held-out
embedders at the threshold of a fixed FAR (Xiao et al., CVPR 2021: the latent patch transfers better).

Every run is ``task=face`` (advsuite's own configs, ``face_attack=patch``; ``faces=standin`` by default): embedders
are zoo models trained on the stand-in's training identities (surrogates ``smallcnn``, ``resnet18``; held-out
victims ``convnet``, ``cifarcnn``), thresholds are set at FAR 1e-3 on all pairs of the held-out identities, and
each method attacks the same ``--pairs`` pairs. Methods: {dodging, impersonation} x {latent, pixel}, region
eyes; ``pixel_plain`` is the pixel patch without MI/DI/TI (plain signed gradient descent).

    python bench/face.py                        # ~15 min on 2 CPU cores the first time (embedders, generator)
    python bench/face.py --markdown             # the docs/benchmarks.md section, from the JSON
    python bench/face.py --override face_attack.steps=20 --pairs 50 --json /tmp/face-smoke.json   # smoke test

Results accumulate in ``--json`` (default bench/results/face.json), keyed by method, written after each run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module

from advsuite.attacks.face.task import run_face
from advsuite.configs import plugin_overrides
from advsuite.device import provenance

VICTIMS = "task.victims=[convnet,cifarcnn]"
METHODS: dict[str, list[str]] = {
    f"{mode}/{space}": [f"face_attack.mode={mode}", f"face_attack.space={space}"]
    for mode in ("dodging", "impersonation")
    for space in ("latent", "pixel")
} | {
    f"{mode}/pixel_plain": [f"face_attack.mode={mode}", "face_attack.space=pixel", "face_attack.momentum=0",
                            "face_attack.di_prob=0", "face_attack.ti_kernel=1"]
    for mode in ("dodging", "impersonation")
}  # fmt: skip


def run(method: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides = ["task=face", VICTIMS, f"faces={args.faces}", f"n_samples={args.pairs}"]
    overrides += [f"seed={args.seed}", f"verbose={args.progress}", *METHODS[method], *args.override]
    with tempfile.TemporaryDirectory() as out:
        cfg = compose("config", plugin_overrides([*overrides, f"task.output_dir={out}"]))
        start = time.perf_counter()
        summary = run_face(cfg)
    return {
        "method": method,
        "overrides": overrides,
        **provenance(),
        "wall_s": time.perf_counter() - start,
        **summary,
    }


def fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report(runs: dict[str, dict[str, Any]]) -> str:
    if not runs:
        return "nothing recorded yet"
    some = next(iter(runs.values()))
    victims = list(some["victims"])
    surrogates = list(some["surrogates"])
    info = some["faces_info"]
    out = [
        "## Face-verification patches on the offline stand-in"
        if some["faces"] == "face_standin"
        else f"## Face-verification patches on {some['faces']}",
        "",
        f"`python bench/face.py` ({some['machine']}, {some['threads']} torch threads, {some['date'][:10]}). "
        f"Data: `faces={some['faces']}`, {info.get('source')}: {info.get('train_identities')} training identities "
        f"({info.get('train_images')} images) for the embedders and the generator, {info.get('eval_identities')} "
        f"held-out identities ({info.get('eval_images')} images) for thresholds and pairs. {some['n_pairs']} pairs "
        f"per method; region `{some['attack']['region']}` ({some['attack']['steps']} steps). Thresholds at FAR "
        f"{some['far']:g}; success counts only pairs the embedder judged right when clean (`valid`).",
        "",
        "Embedders (identity-classification accuracy on held-out photos of the training identities; verification "
        "TAR at the threshold): "
        + ", ".join(
            f"{role} `{n}` {fmt(r.get('identity_accuracy'))} / TAR {fmt(r['tar'])}"
            for role, group in (("victim", "victims"), ("surrogate", "surrogates"))
            for n, r in some[group].items()
        )
        + ".",
        "",
    ]
    head = ["mode", "space", *(f"victim {v}: success (valid), cos clean → patched" for v in victims)]
    head += ["transfer (mean)", *(f"surrogate {s} (white-box)" for s in surrogates), "median L∞", "wall s"]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for method, r in runs.items():
        mode, space = method.split("/")
        cells = [mode, space]
        cells += [
            f"{fmt(r['victims'][v]['success_rate'])} ({int(r['victims'][v]['n_valid'])}), "
            f"{r['victims'][v]['mean_similarity_clean']:.3f} → {r['victims'][v]['mean_similarity_adv']:.3f}"
            for v in victims
        ]
        cells += [fmt(r["transfer_success"])]
        cells += [fmt(r["surrogates"][s]["success_rate"]) for s in surrogates]
        cells += [fmt(r["median_linf"]), f"{r['wall_s']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for mode in ("dodging", "impersonation"):
        lat, pix = runs.get(f"{mode}/latent"), runs.get(f"{mode}/pixel")
        if lat and pix and lat["transfer_success"] is not None and pix["transfer_success"] is not None:
            gap = 100 * (lat["transfer_success"] - pix["transfer_success"])
            pairs = sum(v["n_valid"] for v in lat["victims"].values())
            differ = abs(gap / 100 * pairs)  # successful victim-pairs that separate the two
            verdict = "PASS" if gap > 0 else "FAIL"
            if differ < 5:
                verdict = f"inconclusive: {differ:.0f} of {pairs:.0f} victim-pairs differ"
            out.append(
                f"- {mode}: transfer success latent − pixel = {fmt(lat['transfer_success'])} − "
                f"{fmt(pix['transfer_success'])} = {gap:+.1f} points (the paper's claim, > 0: {verdict})"
            )
            sign = 1 if mode == "impersonation" else -1  # the direction the attack pushes the similarity
            moved = {
                space: sum(
                    sign * (v["mean_similarity_adv"] - v["mean_similarity_clean"]) for v in r["victims"].values()
                )
                / len(r["victims"])
                for space, r in (("latent", lat), ("pixel", pix))
            }
            out.append(
                f"- {mode}: mean victim similarity moved towards the goal by {moved['latent']:.3f} (latent) vs "
                f"{moved['pixel']:.3f} (pixel)"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--faces", default="standin", help="the faces= config (standin, lfw, celeba, ...)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for every run")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/face.json"))
    parser.add_argument("--markdown", action="store_true", help="only print the report from --json")
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = json.loads(args.json.read_text())["runs"] if args.json.exists() else {}
    if args.markdown:
        print(report(runs))
        return
    methods = [m for m in args.methods.split(",") if m]
    if bad := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        for method in methods:
            print(f"{method}: running")
            runs[method] = run(method, args)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps({"runs": runs}, indent=1))
            tmp.replace(args.json)
    print(report(runs))


if __name__ == "__main__":
    main()
