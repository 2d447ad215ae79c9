"""The audit's checks: each PASS or FLAG, with the evidence.

They follow Carlini et al., *On Evaluating Adversarial Robustness* (2019; the checklist), Athalye, Carlini,
Wagner (ICML 2018; obfuscated gradients), AutoAttack's automatic flags (Croce & Hein 2020) and Pintor et al.,
*Indicators of Attack Failure* (NeurIPS 2022): silent success and incomplete optimisation are theirs.

A comparison between attacks counts images, not rates: "black-box beats white-box" means some images fell
to a black-box attack that no white-box attack broke, more than ``max(2, 2% of n)`` of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from advsuite.models.classifier import Classifier

from .battery import VANISHING, Stage

#: a comparison flags when more images than this share of the sample (and at least two) differ: one image
#: either way is within the noise of restarts on a robust model
MARGIN_SHARE = 0.02
#: robust accuracy left at an unbounded epsilon above this is a flag
UNBOUNDED_MAX = 0.05
#: a naive evaluation this much above the lowest found is a flag
NAIVE_GAP = 0.05
#: Pintor et al.: a loss (rescaled to [0, 1] per image) still moving by more than this over the last 10 steps
INCOMPLETE_DELTA = 0.05


@dataclass
class Check:
    name: str
    flagged: bool
    evidence: str

    @property
    def verdict(self) -> str:
        return "FLAG" if self.flagged else "PASS"


def _margin(n: int) -> int:
    return max(2, int(MARGIN_SHARE * n))


def output_checks(model: Classifier, x: torch.Tensor, eot_iter: int, declared_random: bool) -> list[Check]:
    """Randomized outputs (5 passes on the clean images) and probability-like outputs."""
    with torch.no_grad(), model.evaluating():
        outs = [model(x).float().cpu() for _ in range(5)]
    varies = any(not torch.equal(outs[0], o) for o in outs[1:])
    random = varies or declared_random
    if random and eot_iter <= 1:
        randomized = Check("randomized outputs", True, "the defended model's outputs change from call to call"
                           f"{' (the defense declares it)' if declared_random else ''}, and the audit ran without EOT: "
                           "rerun with task.eot_iter=20")  # fmt: skip
    elif random:
        randomized = Check("randomized outputs", False, f"randomized; every gradient averaged over {eot_iter} passes")
    else:
        randomized = Check("randomized outputs", False, "5 forward passes gave identical outputs")
    o = outs[0]
    probs = bool(((o >= 0) & (o <= 1)).all()) and bool(torch.allclose(o.sum(1), torch.ones(len(o)), atol=1e-3))
    probability = Check("probability-like outputs", probs, "outputs are in [0, 1] and sum to 1: attacks need logits"
                        if probs else "outputs are logits (not a probability vector)")  # fmt: skip
    return [randomized, probability]


def gradient_check(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Zero, NaN or vanishing input gradients of the cross-entropy, as autograd sees the defended model."""
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad(), model.evaluating():
        loss = torch.nn.functional.cross_entropy(model(xg), y.to(xg.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if grad is None:
        return Check("gradients", True, "the loss does not depend on the input through autograd (graph broken)")
    norms = grad.flatten(1).norm(dim=1).cpu()
    bad_nan = int((~torch.isfinite(norms)).sum())
    bad_zero = int((norms < VANISHING).sum())
    flagged = bad_nan + bad_zero > 0
    return Check("gradients", flagged, f"{bad_zero} of {len(x)} images have a zero (or < {VANISHING:g}) gradient and "
                 f"{bad_nan} a NaN/inf one; median gradient norm {float(norms.median()):.3g}")  # fmt: skip


def _broken(stage: Stage) -> torch.Tensor:
    return ~torch.tensor(stage.robust, dtype=torch.bool)


def comparison_checks(stages: dict[str, Stage]) -> list[Check]:
    """Black-box, transfer and random search against the gradient attacks, image by image."""
    white = [s for s in stages.values() if s.kind == "whitebox" and s.robust]
    if not white:
        return []
    n = len(white[0].robust)
    any_white = torch.stack([_broken(s) for s in white]).any(0)
    checks = []
    for kinds, title in ((("score", "label"), "black-box beats white-box"), (("transfer",), "transfer beats "
                         "white-box"), (("random",), "random search beats the gradient attacks")):  # fmt: skip
        others = [s for s in stages.values() if s.kind in kinds]
        if not others:
            checks.append(Check(title, False, "not run"))
            continue
        extra = {s.name: int((_broken(s) & ~any_white).sum()) for s in others}
        flagged = max(extra.values()) > _margin(n)
        detail = ", ".join(f"{k} broke {v}" for k, v in extra.items())
        checks.append(Check(title, flagged, f"images no white-box attack broke: {detail} (flag above {_margin(n)})"))
    return checks


def convergence_checks(stages: dict[str, Stage]) -> list[Check]:
    """More steps and restarts; silent success; incomplete optimisation; the ε curve and unbounded ε."""
    checks = []
    n = len(stages["pgd"].robust)
    gained = int((_broken(stages["pgd_long"]) & ~_broken(stages["pgd"])).sum())
    evidence = f"PGD with more steps and restarts broke {gained} images plain PGD did not (flag above {_margin(n)})"
    checks.append(Check("more steps/restarts lower robust accuracy", gained > _margin(n), evidence))
    silent = int(stages["pgd"].details.get("silent", 0))
    evidence = f"{silent} images had an adversarial iterate that PGD did not return (it keeps the last iterate)"
    checks.append(Check("silent success", silent > _margin(n), evidence + f" (flag above {_margin(n)})"))
    traces = stages["pgd"].details.get("loss_trace", [])
    failed = [t for t, robust in zip(traces, stages["pgd"].robust, strict=True) if robust]
    incomplete = incomplete_share(failed)
    mattered = gained > _margin(n)  # more steps then broke more images: the unfinished optimisation mattered
    evidence = (
        f"{incomplete:.0%} of the {len(failed)} images PGD failed on: the loss still moved by > {INCOMPLETE_DELTA} "
        f"(rescaled) over the last 10 steps; more steps and restarts {'did' if mattered else 'did not'} break "
        "more images (flag when above 10% and they did)"
    )
    checks.append(Check("incomplete optimisation", incomplete > 0.1 and mattered, evidence))
    values = list(stages["unbounded"].details.get("curve", {}).values())[:-1]
    rises = [b - a for a, b in itertools.pairwise(values) if b - a > 1.0 / max(1, n)]
    evidence = "PGD robust accuracy at ε × 0.25, 0.5, 1, 2: " + ", ".join(f"{v:.3f}" for v in values)
    checks.append(Check("robust accuracy monotone in ε", bool(rises), evidence))
    unbounded = float(stages["unbounded"].details.get("unbounded", 0.0))
    at = stages["unbounded"].details.get("unbounded_eps")
    evidence = f"robust accuracy {unbounded:.3f} at ε = {at} (flag above {UNBOUNDED_MAX})"
    checks.append(Check("unbounded ε reaches 0%", unbounded > UNBOUNDED_MAX, evidence))
    return checks


def incomplete_share(trace: list[list[float]]) -> float:
    """Pintor et al.'s incomplete optimisation: per image, the running best loss rescaled to [0, 1] over the
    path; the share of images whose rescaled loss still changed by more than ``INCOMPLETE_DELTA`` in the last
    10 steps."""
    if not trace or len(trace[0]) < 11:
        return 0.0
    t = torch.tensor(trace, dtype=torch.float64)
    best = t.cummax(dim=1).values
    lo, hi = best[:, :1], best[:, -1:]
    scaled = (best - lo) / (hi - lo).clamp_min(1e-12)
    moved = scaled[:, -1] - scaled[:, -11]
    return float((moved > INCOMPLETE_DELTA).double().mean())


def naive_gap_check(stages: dict[str, Stage]) -> Check:
    """Naive PGD against the same PGD made defense-aware (BPDA), and, on the images where the naive PGD's
    cross-entropy gradient vanished, given the margin loss: a gap here is the model hiding from the naive
    evaluation.

    The margin loss counts only on images whose naive gradient vanished (a saturated softmax underflows to an
    exact zero). Elsewhere sign-PGD follows the cross-entropy's direction at any scale, and margin beating
    cross-entropy is the loss being weaker on this model, not masking: APGD-DLR beats APGD-CE by several points
    on weak undefended models too (Croce & Hein 2020, table 2). The lowest number is in the report either way.
    """
    naive = stages["pgd_naive"].accuracy
    bpda, margin = stages["pgd"], stages["pgd_margin"]
    vanished = [bool(v) for v in stages["pgd_naive"].details.get("vanished", [False] * len(bpda.robust))]
    aware = [b and not (v and not m) for b, m, v in zip(bpda.robust, margin.robust, vanished, strict=True)]
    aware_accuracy = sum(aware) / max(1, len(aware))
    evidence = (
        f"naive PGD (autograd through the defense, cross-entropy) {naive:.3f}; the same PGD through BPDA "
        f"{bpda.accuracy:.3f}, with the margin loss {margin.accuracy:.3f}; the gradient vanished on "
        f"{sum(vanished)} images, where the margin loss counts: defense-aware {aware_accuracy:.3f}; "
        f"flag above a {NAIVE_GAP} gap"
    )
    return Check("naive evaluation gap", naive - aware_accuracy > NAIVE_GAP, evidence)
