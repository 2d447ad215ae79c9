"""The equivalence checker: a candidate trace against a reference, tensor by tensor, with round-off-derived
tolerances (TTrace, Jiang et al., arXiv 2506.09280, theorem 5.3 as NVIDIA BioNeMo's test utilities
implement it; the paper's own text was not reachable).

For each key the relative Frobenius error ``||candidate − reference|| / ||reference||`` is compared with
``k · C^(L+1−l) · ε(dtype)``: ``l`` is the tensor's layer (1 = the first module the forward pass ran), ``L``
the number of layers, ``ε`` the dtype's machine epsilon. Round-off grows geometrically with depth from the
loss; ``C`` is "close to 1" (1.01–1.05) and ``k`` absorbs the hidden constant (2–8); our defaults, C = 1.03
and k = 4, are that implementation's. A second opinion comes from a *noise floor*: a reference rerun
perturbed at machine-epsilon scale; a key whose error is more than ``noise_factor`` times the floor's is
marked beside the bound's verdict. The first key over its bound, in execution order, is the localisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from advsuite.errors import ConfigError

from .tracer import Trace, TraceKey

#: the path prefix under which a noise-floor run keeps the perturbed weights each of its steps started from
START = "start"


class TraceMismatchError(ConfigError):
    """The two traces do not hold the same keys or shapes: they are not runs of the same model and steps."""


def tolerance(layer: int, n_layers: int, dtype: torch.dtype, k: float = 4.0, c: float = 1.03) -> float:
    """``k · C^(L+1−l) · ε(dtype)``."""
    return k * c ** (n_layers + 1 - layer) * torch.finfo(dtype).eps


#: the share of an adversarial input's values that may differ from the reference's, by the precision the step
#: computes in: a sign step that round-off flipped moves a pixel by a whole step, wrong randomness moves nearly
#: all of them. Set from clean 2-process runs of `cifarcnn` (bench/distributed.py: at most 0.8% of pixels in
#: fp32 and 15.2% under bf16 autocast with two workers per process); the attack-randomness bugs move 90%.
ADV_FLIP_FRACTION = {torch.float32: 0.02, torch.bfloat16: 0.30}
#: a pixel of an adversarial input "differs" when it moved by more than this (far above round-off, far below a step)
ADV_FLIP_ATOL = 1e-4


def flipped_fraction(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((candidate.double() - reference.double()).abs() > ADV_FLIP_ATOL).double().mean())


def relative_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    diff = (candidate.double() - reference.double()).norm()
    scale = reference.double().norm()
    return float(diff / scale) if scale > 0 else float(diff)


@dataclass(frozen=True)
class Comparison:
    key: str
    layer: int
    error: float
    tolerance: float
    noise_floor: float | None = None
    noise_factor: float = 10.0

    @property
    def diverges(self) -> bool:
        """Over the round-off bound and, where a noise floor was measured, over ``noise_factor`` × the floor: a
        tensor that cancels to about zero (a conv bias before BatchNorm: its gradient is ~0 in exact arithmetic)
        has a relative error far over the bound from round-off alone, and the floor shows it."""
        over_floor = self.noise_floor is None or self.error > self.noise_factor * self.noise_floor
        return self.error > self.tolerance and over_floor

    @property
    def ratio(self) -> float:
        """error / tolerance (an exact-match key: 0 when equal, inf otherwise)."""
        if self.tolerance > 0:
            return self.error / self.tolerance
        return 0.0 if self.error == 0 else float("inf")


@dataclass
class Verdict:
    comparisons: list[Comparison] = field(default_factory=list)
    noise_factor: float = 10.0

    @property
    def first_divergent(self) -> Comparison | None:
        return next((c for c in self.comparisons if c.diverges), None)

    @property
    def equivalent(self) -> bool:
        return self.first_divergent is None

    @property
    def above_noise(self) -> list[Comparison]:
        """Keys whose error is more than ``noise_factor`` times the noise floor's (the second opinion)."""
        return [
            c
            for c in self.comparisons
            if c.noise_floor is not None and c.error > self.noise_factor * max(c.noise_floor, 1e-300)
        ]

    def summary(self) -> str:
        first = self.first_divergent
        worst = max(self.comparisons, key=lambda c: c.ratio) if self.comparisons else None
        if first is None:
            ratio = f"; largest error {worst.ratio:.2g}× its bound ({worst.key})" if worst else ""
            excused = sum(c.error > c.tolerance for c in self.comparisons)
            floor = (
                f", {excused} of them over the bound but within {self.noise_factor:g}× the noise floor"
                if excused
                else ""
            )
            return f"equivalent: {len(self.comparisons)} tensors within their round-off bounds{floor}{ratio}"
        return (f"divergent: first at {first.key} (layer {first.layer}), relative error {first.error:.3g} > bound "
                f"{first.tolerance:.3g}; {sum(c.diverges for c in self.comparisons)} of {len(self.comparisons)} "
                "tensors over their bounds")  # fmt: skip

    def markdown(self) -> str:
        lines = ["# Trace comparison", "", f"**Verdict:** {self.summary()}", "",
                 "| key | layer | relative error | bound | noise floor | |", "|---|---|---|---|---|---|"]  # fmt: skip
        for c in self.comparisons:
            floor = "–" if c.noise_floor is None else f"{c.noise_floor:.3g}"
            lines.append(f"| {c.key} | {c.layer} | {c.error:.3g} | {c.tolerance:.3g} | {floor} | "
                         f"{'**over**' if c.diverges else ''} |")  # fmt: skip
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> dict[str, str]:
        """``report.md`` and ``errors.png`` (relative error and bound per tensor, in execution order)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.md").write_text(self.markdown())
        fig, ax = plt.subplots(figsize=(8, 3.5))
        index = range(len(self.comparisons))
        ax.semilogy(index, [max(c.error, 1e-18) for c in self.comparisons], ".", label="relative error")
        ax.semilogy(index, [c.tolerance for c in self.comparisons], "-", label="round-off bound")
        if any(c.noise_floor is not None for c in self.comparisons):
            ax.semilogy(index, [max(c.noise_floor or 0, 1e-18) for c in self.comparisons], ":", label="noise floor")
        ax.set_xlabel("traced tensor (execution order)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "errors.png", dpi=100)
        plt.close(fig)
        return {"report": "report.md", "plot": "errors.png"}


def _step_start(key: TraceKey, candidate: Trace) -> torch.Tensor | None:
    """The weight a step started from: the candidate's after the previous step, or the initial one."""
    if key.path.startswith("init/"):
        return None
    previous = (
        str(TraceKey(key.step - 1, key.micro, key.path, "param"))
        if key.step > 0
        else str(TraceKey(0, 0, f"init/{key.path}", "param"))
    )
    return candidate.tensors.get(previous)


def compare(
    reference: Trace,
    candidate: Trace,
    *,
    k: float = 4.0,
    c: float = 1.03,
    noise: Trace | None = None,
    noise_factor: float = 10.0,
    compute_dtype: torch.dtype | None = None,
    updates: bool = False,
) -> Verdict:
    """Every key of ``reference`` against ``candidate`` (and ``noise``, the perturbed reference), in order.

    ``compute_dtype``: the narrowest precision the step computed in (bf16 under autocast); a tensor's bound uses the
    wider of its own dtype's ε and this one's, since an fp32 gradient computed from bf16 activations carries bf16
    round-off (not the initial weights: nothing computed them). ``updates`` (for a reference that starts every step
    from the candidate's previous state, as :func:`advsuite.distributed.tracing.reference_steps` does): a weight
    after a step is judged by the step's update (the weight minus the candidate's previous weight): an update is
    about 1% of the weight, so an error in it (a doubled learning rate) would hide inside the weight's own bound.
    The adversarial inputs are judged by their flip fraction alone: a noise floor there measures how a perturbation
    of every weight moves a discontinuous sign step, far more than round-off in the reductions does."""
    missing = sorted(set(reference.tensors) ^ set(candidate.tensors))
    if missing:
        raise TraceMismatchError(f"the traces hold different tensors, e.g. {missing[:5]}: compare runs of the same "
                                 "model, steps and trace kinds")  # fmt: skip
    n_layers = max(reference.layers.values(), default=1)
    verdict = Verdict(noise_factor=noise_factor)
    parsed = {key: TraceKey.parse(key) for key in reference.tensors}
    order = sorted(parsed, key=lambda key: (parsed[key].step, parsed[key].micro))
    for key in order:  # a stable sort: within a (step, micro-batch), the order the tensors were recorded in
        ref, cand = reference.tensors[key], candidate.tensors[key]
        if ref.shape != cand.shape:
            raise TraceMismatchError(f"{key}: shape {tuple(cand.shape)} against the reference's {tuple(ref.shape)}")
        kind = parsed[key].kind
        start = _step_start(parsed[key], candidate) if kind == "param" and updates else None
        if start is not None:  # a weight after a step: judge the step's update, not the weight it is added to
            ref, cand = ref - start, cand - start
        floor = None
        if noise is not None and key in noise.tensors:
            noise_start = start  # the noise run's update is taken from its own perturbed start, where it kept it
            if start is not None:
                step_key = TraceKey(parsed[key].step, 0, f"{START}/{parsed[key].path}", "param")
                noise_start = noise.tensors.get(str(step_key), start)
            floor = relative_error(noise.tensors[key] - (noise_start if noise_start is not None else 0), ref)
        layer = reference.layer_of(key)
        dtype = ref.dtype
        if compute_dtype is not None and ref.is_floating_point() and not parsed[key].path.startswith("init/"):
            dtype = max(dtype, compute_dtype, key=lambda d: torch.finfo(d).eps)
        if kind == "input":  # data: exactly the reference's
            error, bound = relative_error(cand, ref), 0.0
        elif kind == "adv_input":
            error, floor = flipped_fraction(cand, ref), None
            bound = ADV_FLIP_FRACTION[compute_dtype or torch.float32]
        else:
            error, bound = relative_error(cand, ref), tolerance(layer, n_layers, dtype, k, c)
        verdict.comparisons.append(Comparison(key, layer, error, bound, floor, noise_factor))
    return verdict
