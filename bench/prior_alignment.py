"""How much of the victim's boundary gradient each method's probes can represent (an analysis, not an attack).

The PSBA paper (Zhang et al., ICML 2021, §3) explains a projection attack's query efficiency by two quantities
of its probe distribution: how long the true gradient's projection onto the probes' range is, and how many
dimensions that range has. This script measures both on the same victims, images and starts as
``bench/boundary.py`` (it imports that script's setup), using the victim's white-box gradient, which the
attacks themselves never see:

- boundary points: for each image, a 30-step binary search on the segment from the image to the targeted
  start (a correctly classified image of the target class) for the zero of the margin
  S(x) = logit_t - max_{j != t} logit_j (untargeted: max_{j != y} logit_j - logit_y);
- g = grad S at that point (what HSJA's estimator approximates);
- per method, ``--probes`` probes drawn by the attack's own generator, each scaled to unit L2:
  - ``gain``: d · mean cos²(u, g) over probes and images; 1 for isotropic Gaussian probes (HSJA), k-times higher
    for a k-dimensional range holding all of g, lower where the range misses g;
  - ``rank``: components of the probes' (uncentred) second-moment matrix that hold 99.9% of its trace (directions
    with less are practically never followed; 4000 isotropic probes in d = 3072 give about 3000);
  - ``eff. dim``: participation ratio (sum λ)² / sum λ² of those eigenvalues;
  - ``captured``: median over images of ||P g||² / ||g||², with P the projection onto that range: the part
    of g the method's updates can ever follow (the rest shrinks only through binary searches).

    export ADVSUITE_DATA=/work/shared/data
    python bench/prior_alignment.py --dataset cifar10 --mode targeted
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import boundary as bb
import torch
from hydra import initialize_config_module

from advsuite.attacks.boundary.priors.base import spectrum_spread
from advsuite.oracles import LabelOracle

DEFAULT_METHODS = ("hsja", "qeba_s", "qeba_f", "qeba_s_f4", "qeba_f_f4", "qeba_i", "nlba_ae", "nlba_vae",
                   "nlba_vae_ref6", "nlba_gan", "psba", "psba_scale3")  # fmt: skip


def margin(model: Any, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """S(x) > 0 exactly where x is adversarial (targeted: class t wins; untargeted: a class other than y wins)."""
    logits = model(x)
    label = y if targets is None else targets
    own = logits.gather(1, label[:, None]).squeeze(1)
    other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
    return own - other if targets is not None else other - own


def boundary_gradients(v: dict[str, Any], targeted: bool, steps: int = 30) -> torch.Tensor:
    """Unit gradients of the margin at the boundary point between each image and its start."""
    model = v["model"].eval()
    x, y, starts = (v[k].to(model.device) for k in ("x", "y", "starts"))
    targets = v["targets"].to(model.device) if targeted else None
    # blend weight of the start, with S(lo) <= 0 < S(hi)
    lo, hi = torch.zeros(len(x), device=x.device), torch.ones(len(x), device=x.device)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            point = x + mid.view(-1, 1, 1, 1) * (starts - x)
            adv = margin(model, point, y, targets) > 0
            hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    point = (x + hi.view(-1, 1, 1, 1) * (starts - x)).requires_grad_(True)
    (grad,) = torch.autograd.grad(margin(model, point, y, targets).sum(), point)
    flat = grad.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu()


def alignment(probes: torch.Tensor, grads: torch.Tensor, energy: float = 0.999) -> dict[str, float]:
    """gain, rank, effective dimension and captured share of ``grads`` (rows unit) for unit-scaled ``probes``."""
    u = probes.flatten(1).double()
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g = grads.double()
    d = u.shape[1]
    gain = float(((u @ g.T) ** 2).mean() * d)
    _, sv, vh = torch.linalg.svd(u, full_matrices=False)
    spread = spectrum_spread(sv**2, energy)
    captured = ((g @ vh[: int(spread["rank"])].T) ** 2).sum(1)
    return {"gain": gain, "rank": spread["rank"], "eff_dim": spread["effective_dim"],
            "captured": float(captured.median()), "d": d}  # fmt: skip


def measure(method: str, v: dict[str, Any], mode: str, grads: torch.Tensor, args: argparse.Namespace) -> dict:
    attack, _ = bb.build_attack(method, v, mode, 1000, args)
    model = v["model"]
    oracle = LabelOracle(model, 1, 1000, attack.max_batch)
    generator = torch.Generator().manual_seed(args.seed)
    x_t = v["starts"][:1].to(model.device)
    probes = attack.probes(oracle)(args.probes, x_t, v["x"][:1].to(model.device), generator)
    return alignment(probes.cpu(), grads)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", choices=list(bb.DATASETS))
    parser.add_argument("--mode", default="targeted", choices=["targeted", "untargeted"])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--probes", type=int, default=4000, help="probes per method (> d: isotropic ones span R^d)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=Path("bench/results/prior_alignment.json"))
    args = parser.parse_args()
    # what bench/boundary.py's setup reads
    args.override, args.progress, args.fb_images = [], False, 0
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(bb.METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(bb.METHODS)}")
    return args


def main() -> None:
    args = parse()
    rows: dict[str, dict[str, float]] = {}
    with initialize_config_module(config_module="advsuite.conf", version_base="1.3"):
        v = bb.victim(args.dataset, args) | {"data_key": args.dataset}
        grads = boundary_gradients(v, args.mode == "targeted")
        for method in args.methods:
            try:
                rows[method] = measure(method, v, args.mode, grads, args)
            except Exception as exc:  # e.g. a prior that is not cached and fails to build: report, go on
                print(f"{method}: skipped, {type(exc).__name__}: {exc}")
    print(f"\n{args.dataset}, {args.mode}: {len(grads)} boundary gradients, {args.probes} probes per method\n")
    print("| method | gain (d · mean cos²) | rank (99.9% energy) | eff. dim | captured share of g (median) |")
    print("|---|---|---|---|---|")
    for method, r in rows.items():
        print(f"| {method} | {r['gain']:.2f} | {r['rank']} | {r['eff_dim']:.0f} | {r['captured']:.3f} |")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results[f"{args.dataset}/{args.mode}"] = {"images": len(grads), "probes": args.probes, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
