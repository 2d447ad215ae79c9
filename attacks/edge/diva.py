"""DIVA: evasive attacks on edge (quantised or pruned) models.

Hao, Awatramani, Hu, Mao, Chang, Kaushik, Venkataramani, Sen, "A Tale of Two Models: Constructing
Evasive Attacks on Edge Models", MLSys 2022 (arXiv 2204.10933).

An edge model is an *adapted* copy of a server ("original") model (int8 quantised or pruned, see
:mod:`.adapt`). DIVA looks for inputs the adapted model misclassifies while the original still gets
right, so that a server re-checking the edge's decisions does not notice. For an image ``x`` of label
``y`` it maximises, inside the Linf ball of radius ε,

    L(x) = p_orig(x)[y] − c · p_adapt(x)[y]            (softmax probabilities)
    g    = ∇ₓL / (RMS(∇ₓL) + 1e-5);   x ← Π_{ball ∩ [0,1]}( x + α · sign(g) )

and stops, per image, at the first iterate where the adapted top-1 label is outside the original's
top-``top_k`` while the original still predicts ``y``. Gradients go through the fake-quant (QAT,
straight-through) copy for ``int8`` and through the pruned model for ``prune``; success is measured on
the real int8 model.

``setting: semi_blackbox``: the attacker holds the adapted model but not the original. A full-precision
surrogate of the same architecture, distilled from the adapted model on training images, replaces
``p_orig`` in the loss and in the stopping test, which also asks the surrogate's confidence in ``y`` to
exceed ``min_confidence``. The original is used for nothing but measuring the outcome.

``method: pgd`` is the paper's baseline: PGD maximising the cross-entropy of the adapted model alone,
with the same ε, step, steps and stopping test.

Metrics (:meth:`DIVA.extra_metrics`), over the attacked images that the original and the deployed
adapted model (and, semi-black-box, the surrogate) all classify correctly: ``adapted_success`` (adapted
top-1 ≠ y), ``evasive_success`` (adapted fooled and original top-1 = y), ``evasive_success_top5``
(adapted top-1 outside the original's top-5 and original top-1 = y) and ``n_both_correct``. The
pipeline's own ``success_rate``/``robust_accuracy`` are measured on the original (the victim): for DIVA
they are the rate at which the original is fooled too, i.e. the attack is detected.

Defaults and where they differ from the authors' code (TensorFlow; one image at a time):

- ε = 8/255, α = 1/255, 20 steps, c = 1, no random start, early stop per image: the authors' ImageNet
  setting (8 and 1 on the 0-255 scale). Their loss uses the original's predicted label; only images the
  original classifies correctly are attacked here, so it is ``y``.
- The RMS normalisation does not change the sign step; it is kept to follow the authors' update.
- Softmax probabilities are computed in float64 so that confident predictions (p = 1 in float32) keep a
  gradient.
- The surrogate starts from a fresh initialisation and is distilled for ``distill_steps`` Adam steps
  (lr 1e-3); the authors started from public ImageNet weights and distilled for 5 epochs (RMSprop, lr
  2e-5). Temperature 10 and the 0.1 weight of the label loss are theirs.
- ``top_k`` chooses the stopping test: 1 (default) is the authors' top-1 attack, 5 their top-5 attack.
  ``evasive_success_top5`` is always measured on the returned images.

Queries: every pass of one model over one image counts one query (a forward+backward pass is one). Per
step, DIVA makes two (the original or surrogate, and the adapted model); PGD makes one, plus one pass of
the original (surrogate) from the second step on to test for early stopping. Images still running after
the last step get a final test (two passes), and every image one pass of the original to report
``success``. Building the adapted models and the surrogate is a one-off, reported in ``extras``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from advsuite.attack import Access, AttackResult, FixedEpsilonAttack, PrepareContext
from advsuite.data import sample_tensors
from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.validation import check_choice, check_flags, check_images, check_int, check_number

from .adapt import (
    ADAPTATIONS,
    BACKENDS,
    EdgeModels,
    accuracy,
    distill_surrogate,
    prune_magnitude,
    quantize_int8,
)

METHODS = ("diva", "pgd")
SETTINGS = ("whitebox", "semi_blackbox")


def rms_normalise(grad: torch.Tensor) -> torch.Tensor:
    """``g / (sqrt(mean(g²)) + 1e-5)`` per image (the authors' ``normalize``)."""
    rms = grad.flatten(1).pow(2).mean(1).sqrt().view(-1, *[1] * (grad.dim() - 1))
    return grad / (rms + 1e-5)


def label_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``y`` per row, in float64 (a float32 softmax saturates at 1)."""
    return F.softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1)


def evasive(
    ref_logits: torch.Tensor,
    adapted_logits: torch.Tensor,
    y: torch.Tensor,
    top_k: int = 1,
    min_confidence: float | None = None,
) -> torch.Tensor:
    """Per row: the reference predicts ``y`` (with probability above ``min_confidence`` if given) and the
    adapted top-1 label is not among the reference's top ``top_k``."""
    ref_ok = ref_logits.argmax(1) == y
    if min_confidence is not None:
        ref_ok &= label_probability(ref_logits, y) > min_confidence
    top = ref_logits.topk(min(top_k, ref_logits.shape[1]), dim=1).indices
    outside = ~(top == adapted_logits.argmax(1, keepdim=True)).any(1)
    return ref_ok & outside


@torch.no_grad()
def logits_of(model: Classifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits in eval mode, chunked, on the CPU (``x`` may live anywhere)."""
    with model.evaluating():
        out = [model(x[i : i + batch_size].to(model.device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


@dataclass
class DIVA(FixedEpsilonAttack):
    """DIVA (Hao et al., MLSys 2022) and its PGD-on-the-adapted-model baseline; see the module docstring."""

    access: ClassVar[Access] = "whitebox"
    leaderboard_metrics: ClassVar[Mapping[str, str]] = {
        "adapted_success": "adapted-model success",
        "evasive_success": "evasive success",
    }
    norm = "linf"

    method: str = "diva"
    setting: str = "whitebox"
    adaptation: str = "int8"
    eps: float = 8 / 255
    steps: int = 20
    step_size: float = 1 / 255
    c: float = 1.0
    top_k: int = 1
    early_stop: bool = True
    #: semi-black-box: the surrogate's probability of y must exceed this in the stopping test
    min_confidence: float = 0.6
    #: int8: the quantised engine (qnnpack, x86, fbgemm, onednn)
    backend: str = "qnnpack"
    #: prune: the fraction of conv/linear weights removed (global L1)
    sparsity: float = 0.8
    #: training images used to calibrate, fine-tune and distil (a seeded random subset)
    calibration_images: int = 2000
    finetune_steps: int = 100
    finetune_lr: float = 1e-4
    distill_steps: int = 500
    distill_lr: float = 1e-3
    temperature: float = 10.0
    distill_alpha: float = 0.1
    train_batch_size: int = 64
    seed: int = 0
    verbose: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "method", self.method, METHODS)
        check_choice(owner, "setting", self.setting, SETTINGS)
        check_choice(owner, "adaptation", self.adaptation, ADAPTATIONS)
        check_choice(owner, "backend", self.backend, BACKENDS)
        check_number(owner, "eps", self.eps)
        check_number(owner, "step_size", self.step_size)
        check_number(owner, "c", self.c)
        for name in ("finetune_lr", "distill_lr", "temperature"):
            check_number(owner, name, getattr(self, name))
        for name, low in (("steps", 1), ("top_k", 1), ("calibration_images", 1), ("finetune_steps", 0)):
            check_int(owner, name, getattr(self, name), low)
        for name, low in (("distill_steps", 1), ("train_batch_size", 1), ("seed", 0)):
            check_int(owner, name, getattr(self, name), low)
        check_flags(owner, self, "early_stop", "verbose")
        for name in ("sparsity", "min_confidence", "distill_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{owner}: {name} must be a number in [0, 1], got {value!r}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"{owner}: sparsity must be strictly between 0 and 1, got {self.sparsity!r}")
        if self.eps > 1:
            raise ConfigError(f"{owner}: eps is on the [0, 1] image scale (8/255 = 0.0314), got {self.eps!r}")
        self.eps, self.step_size, self.c = float(self.eps), float(self.step_size), float(self.c)
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._edge: tuple[Classifier, tuple[Any, ...], EdgeModels] | None = None

    # ------------------------------------------------------------------------------- adapted models

    def prepare(self, context: PrepareContext) -> None:
        """Take ``calibration_images`` training images (seeded) to build the adapted models from."""
        self.set_training_data(*sample_tensors(context.data.train, self.calibration_images, self.seed))

    def set_training_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The images (and labels) to calibrate, fine-tune and distil on (Python API; ``prepare`` calls it)."""
        check_images(x, name="DIVA training images")
        if len(x) == 0 or y.shape != (len(x),):
            raise ConfigError(
                f"DIVA needs a non-empty batch of training images and one label each, got {tuple(y.shape)}"
            )
        self._train = (x.detach().cpu().float(), y.detach().cpu().long())
        self._edge = None

    def _settings(self) -> tuple[Any, ...]:
        return (
            self.adaptation,
            self.backend,
            self.sparsity,
            self.finetune_steps,
            self.finetune_lr,
            self.train_batch_size,
            self.seed,
            self.setting,
            self.distill_steps,
            self.distill_lr,
            self.temperature,
            self.distill_alpha,
        )

    def edge_models(self, model: Classifier) -> EdgeModels:
        """The adapted models (and surrogate) of ``model``: built on first use, then cached for this model."""
        if self._edge is not None and self._edge[0] is model and self._edge[1] == self._settings():
            return self._edge[2]
        if self._train is None:
            raise ConfigError(
                "DIVA needs training images to build the edge model: task=evaluate calls prepare(); from Python "
                "call attack.set_training_data(x_train, y_train) first"
            )
        x, y = self._train
        common: dict[str, Any] = {
            "finetune_steps": self.finetune_steps,
            "lr": self.finetune_lr,
            "batch_size": self.train_batch_size,
            "seed": self.seed,
            "verbose": self.verbose,
        }
        with model.evaluating():
            if self.adaptation in ("int8", "int8_ptq"):
                scheme = "qat" if self.adaptation == "int8" else "ptq"
                edge = quantize_int8(model, x, y, backend=self.backend, scheme=scheme, **common)
            else:
                structured = self.adaptation == "prune_structured"
                edge = prune_magnitude(model, x, y, sparsity=self.sparsity, structured=structured, **common)
            edge.info["n_train_images"] = len(x)
            edge.info["victim_train_accuracy"] = accuracy(model, x, y)
            edge.info["adapted_train_accuracy"] = accuracy(edge.deployed, x, y)
            if self.setting == "semi_blackbox":
                edge.surrogate = distill_surrogate(
                    model,
                    edge.attack_model,
                    x,
                    y,
                    steps=self.distill_steps,
                    lr=self.distill_lr,
                    temperature=self.temperature,
                    alpha=self.distill_alpha,
                    batch_size=self.train_batch_size,
                    seed=self.seed,
                    verbose=self.verbose,
                )
                agree = edge.surrogate.predict(x) == edge.deployed.predict(x)
                edge.info["surrogate_train_agreement"] = float(agree.float().mean())
        self._edge = (model, self._settings(), edge)
        return edge

    # ------------------------------------------------------------------------------- the attack

    def _stops(self, ref_logits: torch.Tensor, adapted_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        confidence = self.min_confidence if self.setting == "semi_blackbox" else None
        return evasive(ref_logits, adapted_logits, y, self.top_k, confidence)

    def run(
        self,
        target: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        starting_points: torch.Tensor | None,
    ) -> AttackResult:
        edge = self.edge_models(target)
        adapted = edge.attack_model
        reference = target if self.setting == "whitebox" else edge.surrogate
        assert reference is not None
        lower, upper = (x - self.eps).clamp_min(target.bounds[0]), (x + self.eps).clamp_max(target.bounds[1])
        x_adv = x.clone()
        stopped = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
        with target.trusted_inputs():  # x was checked by Attack.__call__
            for step in range(self.steps):
                live = (~stopped).nonzero().squeeze(1)
                if len(live) == 0:
                    break
                xl, yl = x_adv[live].requires_grad_(True), y[live]
                with torch.enable_grad():
                    z_adapted = adapted(xl)
                    z_ref = reference(xl) if self.method == "diva" else None
                    if z_ref is not None:
                        value = label_probability(z_ref, yl) - self.c * label_probability(z_adapted, yl)
                    else:
                        value = F.cross_entropy(z_adapted, yl, reduction="none")
                    (grad,) = torch.autograd.grad(value.sum(), xl)
                queries[live] += 1 if z_ref is None else 2
                hit = torch.zeros(len(live), dtype=torch.bool, device=x.device)
                if step > 0 and self.early_stop:  # test the iterate the previous step produced
                    if z_ref is None:
                        with torch.no_grad():
                            z_ref = reference(xl.detach())
                        queries[live] += 1
                    hit = self._stops(z_ref.detach(), z_adapted.detach(), yl)
                    stopped[live[hit]] = True
                move = live[~hit]
                moved = x_adv[move] + self.step_size * rms_normalise(grad[~hit]).sign()
                x_adv[move] = torch.min(torch.max(moved, lower[move]), upper[move])
            with torch.no_grad():
                live = (~stopped).nonzero().squeeze(1)
                if len(live):  # the last step's result gets the same test
                    hit = self._stops(reference(x_adv[live]), adapted(x_adv[live]), y[live])
                    stopped[live[hit]] = True
                    queries[live] += 2
                success = target(x_adv).argmax(1) != y  # the original fooled too: the attack is detected
                queries += 1
        return AttackResult(
            x=x,
            x_adv=x_adv.detach(),
            success=success,
            queries=queries,
            extras={"evasive_claimed": stopped, **edge.info},
        )

    # ------------------------------------------------------------------------------- metrics

    def extra_metrics(
        self,
        model: Classifier,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        attacked: torch.Tensor,
        *,
        targets: torch.Tensor | None,
        batch_size: int,
    ) -> dict[str, float | None]:
        """Adapted and evasive success over the attacked images both models (deployed adapted, original)
        classify correctly; the deployed adapted model is the real int8 one for ``int8``."""
        edge = self.edge_models(model)
        y, attacked = y.cpu(), attacked.cpu()
        clean_deployed = logits_of(edge.deployed, x, batch_size).argmax(1)
        clean_original = logits_of(model, x, batch_size).argmax(1)
        mask = attacked & (clean_original == y) & (clean_deployed == y)
        if edge.surrogate is not None:
            mask &= logits_of(edge.surrogate, x, batch_size).argmax(1) == y
        out = edge_outcomes(model, edge.deployed, x_adv[mask], y[mask], batch_size)
        n_both = int(mask.sum())
        metrics: dict[str, float | None] = {
            "n_both_correct": float(n_both),
            **{key: (float(v.float().mean()) if n_both else None) for key, v in out.items()},
            "adapted_clean_accuracy": float((clean_deployed == y).float().mean()) if len(y) else None,
            # how different the edge copy is: clean images on which it and the original disagree
            "clean_disagreement": float((clean_deployed != clean_original).float().mean()) if len(y) else None,
            "adapted_sparsity": edge.info.get("sparsity"),
            "qat_int8_agreement": None,
        }
        if self.adaptation in ("int8", "int8_ptq") and n_both:
            qat = logits_of(edge.attack_model, x_adv[mask], batch_size).argmax(1)
            deployed = logits_of(edge.deployed, x_adv[mask], batch_size).argmax(1)
            metrics["qat_int8_agreement"] = float((qat == deployed).float().mean())
        return {k: (v if v is None or math.isfinite(v) else None) for k, v in metrics.items()}


def edge_outcomes(
    original: Classifier, adapted: Classifier, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per-image outcomes on ``x_adv`` (images both models classified correctly before the attack):
    ``adapted_success``, ``evasive_success`` and ``evasive_success_top5`` (see the module docstring)."""
    orig = logits_of(original, x_adv, batch_size)
    adapted_pred = logits_of(adapted, x_adv, batch_size).argmax(1)
    orig_ok = orig.argmax(1) == y
    top5 = orig.topk(min(5, orig.shape[1]), dim=1).indices
    outside5 = ~(top5 == adapted_pred[:, None]).any(1)
    fooled = adapted_pred != y
    return {
        "adapted_success": fooled,
        "evasive_success": fooled & orig_ok,
        "evasive_success_top5": outside5 & orig_ok,
    }
