"""Edge adaptations of a Classifier: int8 quantisation and magnitude pruning, plus a distilled surrogate.

These build the "adapted model" of Hao et al., *A Tale of Two Models: Constructing Evasive Attacks on
Edge Models*, MLSys 2022 (arXiv 2204.10933), from any zoo :class:`Classifier`, and the full-precision
surrogate their semi-black-box attacker distils from it.

- ``int8``: quantisation-aware training with torch's FX graph mode (``prepare_qat_fx``): fake-quant
  observers on every weight and activation, calibrated on training images and briefly fine-tuned; the
  fake-quant copy is differentiable (straight-through estimator) and is what an attack takes gradients
  through. ``convert_fx`` then lowers a copy to a real int8 model (int8 weights, quantised kernels of
  the ``backend`` engine, CPU only), which is what is evaluated. On torch 2.14's CPU build the FX path
  works for the ``qnnpack``, ``x86``, ``fbgemm`` and ``onednn`` engines (it warns that
  ``torch.ao.quantization`` is deprecated in favour of torchao's pt2e flow, which is not installed
  here; we silence that one warning). Eager-mode quantisation would need hand-placed quant stubs in
  every architecture and ``quantize_dynamic`` only covers linear layers, so neither is used.
- ``int8_ptq``: post-training quantisation, torch's own flow: ``prepare_fx`` with the engine's default
  (post-training) qconfig, calibration on training images, ``convert_fx``; no weight changes. The
  attack's gradient model is the QAT fake-quant graph calibrated on the same images with no training
  (torch's QAT observers, moving-average min/max, where ``prepare_fx`` uses a histogram observer for
  activations), so it mirrors the deployed model closely but not exactly; ``qat_int8_agreement`` in the
  run's metrics says how closely.
- ``prune``: global L1 unstructured magnitude pruning of every conv and linear weight to ``sparsity``
  (``torch.nn.utils.prune``), brief fine-tuning under the mask, then the mask is made permanent. The
  pruned model is both the gradient model and the evaluated one.
- ``prune_structured``: whole output channels (conv filters, linear units) removed by their L1 norm,
  ``sparsity`` of each layer's channels (``prune.ln_structured``), the classifier layer excepted (its
  units are the classes); fine-tuned and made permanent as above.

Where we differ from the authors (TensorFlow Model Optimization + TFLite on ARM): they ran QAT for
10 epochs and pruned gradually (per-layer polynomial schedule to 80% over 7 epochs, RMSprop at 2e-5);
we calibrate and fine-tune for ``finetune_steps`` mini-batches (Adam) and prune globally in one shot,
so an adapted model costs seconds on a CPU. BatchNorm statistics stay frozen while fine-tuning (the
model is in eval mode), as is usual late in QAT, so a few steps cannot disturb them. The default
engine is ``qnnpack``, the ARM mobile engine (per-tensor weights, 8-bit activations); TFLite quantises
weights per channel, closer to the ``x86`` engine's scheme, which however uses 7-bit activations.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from advsuite.errors import ConfigError
from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator

ADAPTATIONS = ("int8", "int8_ptq", "prune", "prune_structured")
BACKENDS = ("qnnpack", "x86", "fbgemm", "onednn")
#: module types whose weights magnitude pruning removes
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class EdgeModels:
    """The adapted models built from one victim.

    ``attack_model`` is differentiable (the fake-quant QAT copy, or the pruned model) and lives on the
    victim's device; ``deployed`` is what the edge device runs (the real int8 model on the CPU, or the
    pruned model). ``surrogate`` is set for the semi-black-box setting. ``info`` says how they were built.
    """

    attack_model: Classifier
    deployed: Classifier
    info: dict[str, Any] = field(default_factory=dict)
    surrogate: Classifier | None = None


@contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Select torch's quantised engine for the duration (the setting is process-global; restored after)."""
    if backend not in torch.backends.quantized.supported_engines:
        raise ConfigError(
            f"quantised engine {backend!r} is not in this torch build; available: "
            f"{', '.join(torch.backends.quantized.supported_engines)}"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def _quiet_ao() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation notices (pt2e in torchao is the successor; not installed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel", category=UserWarning
        )
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        yield


class _EngineNet(nn.Module):
    """A converted int8 network that runs on the CPU under its own quantised engine."""

    def __init__(self, net: nn.Module, backend: str) -> None:
        super().__init__()
        self.net = net
        self.backend = backend

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with quantized_engine(self.backend), torch.no_grad():
            return self.net(z.detach().cpu().float()).to(z.device)


def wrap_like(victim: Classifier, net: nn.Module, name: str, device: torch.device | None = None) -> Classifier:
    """``net`` in a Classifier with the victim's normalisation, shape and bounds, on ``device`` (default: the
    victim's); inputs are not re-checked."""
    mean = victim.mean.flatten().tolist() if victim.normalized else None
    std = victim.std.flatten().tolist() if victim.normalized else None
    model = Classifier(
        net,
        num_classes=victim.num_classes,
        input_shape=victim.input_shape,
        mean=mean,
        std=std,
        bounds=victim.bounds,
        name=name,
        validate_inputs=False,
    )
    return model.to(device if device is not None else victim.device)


def _batches(n: int, steps: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` mini-batches of indices: seeded epochs of a permutation of ``range(n)``."""
    done = 0
    while done < steps:
        for batch in torch.randperm(n, generator=gen).split(batch_size):
            if done == steps:
                return
            yield batch
            done += 1


def train_steps(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    gen: torch.Generator,
    desc: str,
    verbose: bool,
) -> None:
    """``steps`` Adam steps on ``loss_fn(logits, x_batch, y_batch)``, the model kept in eval mode (frozen BN)."""
    if steps <= 0:
        return
    params = list(model.requires_grad_(True).parameters())
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    with torch.enable_grad():
        for batch in tqdm(_batches(len(x), steps, batch_size, gen), total=steps, desc=desc, disable=not verbose):
            xb, yb = x[batch].to(model.device), y[batch].to(model.device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), xb, yb).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    return float((model.predict(x, batch_size) == y).float().mean()) if len(x) else float("nan")


def measured_sparsity(net: nn.Module) -> float:
    """Fraction of exactly-zero weights over the conv and linear layers."""
    zeros = total = 0
    for module in net.modules():
        if isinstance(module, PRUNABLE):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


def _ce(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


# ----------------------------------------------------------------------------------------------- int8


def quantize_int8(
    victim: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    backend: str = "qnnpack",
    scheme: str = "qat",
    finetune_steps: int = 100,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> EdgeModels:
    """QAT fake-quant copy (calibrated on ``x``, fine-tuned on ``(x, y)``) and the real int8 model from it;
    ``scheme="ptq"``: the int8 model by post-training quantisation, the fake-quant copy calibrated only."""
    from torch.ao.quantization import disable_observer, get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    if scheme not in ("qat", "ptq"):
        raise ConfigError(f"int8 quantisation: scheme must be qat or ptq, got {scheme!r}")

    start = time.perf_counter()
    device = victim.device
    net = copy.deepcopy(victim.net).cpu().train()
    example = (torch.zeros(2, *victim.input_shape),)
    try:
        with _quiet_ao(), quantized_engine(backend):
            qat_net = prepare_qat_fx(net, get_default_qat_qconfig_mapping(backend), example)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"int8 quantisation could not trace {victim.name!r} with torch.fx ({type(exc).__name__}: {exc}); "
            "use adaptation=prune for this model"
        ) from exc
    qat = wrap_like(victim, qat_net, f"{victim.name}-qat").eval()
    # calibration: observers see the training images before any weight changes
    with torch.no_grad():
        for batch in torch.arange(len(x)).split(256):
            qat(x[batch].to(device))
    if scheme == "qat":
        train_steps(
            qat,
            x,
            y,
            _ce,
            steps=finetune_steps,
            lr=lr,
            batch_size=batch_size,
            gen=make_generator(seed),
            desc="QAT fine-tune",
            verbose=verbose,
        )
    qat.apply(disable_observer)  # scales are final: the fake-quant copy now mirrors the int8 model
    qat.eval().requires_grad_(False)
    with _quiet_ao(), quantized_engine(backend):
        int8_net = convert_fx(copy.deepcopy(qat_net).cpu().eval()) if scheme == "qat" else _ptq(victim, x, backend)
    deployed = wrap_like(victim, _EngineNet(int8_net, backend), f"{victim.name}-int8", torch.device("cpu")).eval()
    how = "QAT (prepare_qat_fx)" if scheme == "qat" else "post-training quantisation (prepare_fx, calibration)"
    info = {
        "adaptation": "int8" if scheme == "qat" else "int8_ptq",
        "engine": backend,
        "scheme": f"torch.ao FX {how} + convert_fx",
        "weight_dtypes": sorted({str(t.dtype) for t in int8_weights(deployed)}),
        "seconds": time.perf_counter() - start,
    }
    return EdgeModels(attack_model=qat, deployed=deployed, info=info)


def _ptq(victim: Classifier, x: torch.Tensor, backend: str) -> nn.Module:
    """The victim's network quantised after training: default post-training qconfig, calibrated on ``x``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    net = copy.deepcopy(victim.net).cpu().eval()
    prepared = prepare_fx(net, get_default_qconfig_mapping(backend), (torch.zeros(2, *victim.input_shape),))
    z = x.cpu()  # the network sees normalised inputs, as inside the Classifier
    if victim.normalized:
        z = (z - victim.mean.cpu()) / victim.std.cpu()
    with torch.no_grad():
        for batch in z.split(256):
            prepared(batch)
    return convert_fx(prepared)


def int8_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight tensors of the quantised conv/linear modules of a converted model."""
    out = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and isinstance(value := weight(), torch.Tensor) and value.is_quantized:
            out.append(value)
    return out


# ----------------------------------------------------------------------------------------------- prune


def prune_magnitude(
    victim: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sparsity: float = 0.8,
    structured: bool = False,
    finetune_steps: int = 100,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> EdgeModels:
    """Global L1 unstructured pruning of the conv/linear weights (``structured``: each layer's output
    channels by L1 norm, the last layer excepted), fine-tuned under the mask, made permanent."""
    start = time.perf_counter()
    net = copy.deepcopy(victim.net)
    targets = [(m, "weight") for m in net.modules() if isinstance(m, PRUNABLE)]
    if not targets:
        raise ConfigError(f"{victim.name!r} has no conv or linear layers to prune")
    if structured:
        if len(targets) < 2:
            raise ConfigError(f"{victim.name!r} has no layer before its classifier to prune channels from")
        targets = targets[:-1]  # the classifier's units are the classes
        for module, name in targets:
            prune.ln_structured(module, name, amount=float(sparsity), n=1, dim=0)
    else:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    pruned = wrap_like(victim, net, f"{victim.name}-pruned").eval()
    train_steps(
        pruned,
        x,
        y,
        _ce,
        steps=finetune_steps,
        lr=lr,
        batch_size=batch_size,
        gen=make_generator(seed),
        desc="pruned fine-tune",
        verbose=verbose,
    )
    for module, name in targets:
        prune.remove(module, name)  # weight = weight_orig * mask, for good
    pruned.eval().requires_grad_(False)
    info = {
        "adaptation": "prune_structured" if structured else "prune",
        "sparsity": measured_sparsity(net),
        "seconds": time.perf_counter() - start,
    }
    return EdgeModels(attack_model=pruned, deployed=pruned, info=info)


# ----------------------------------------------------------------------------------------------- surrogate


def reinitialised(victim: Classifier, seed: int) -> nn.Module:
    """A copy of the victim's network with every parameter freshly initialised (no victim weight survives)."""
    net = copy.deepcopy(victim.net).cpu()  # initialised on the CPU: the seed alone fixes the weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(module, "reset_parameters", None)
            if not callable(reset):
                raise ConfigError(
                    f"cannot re-initialise {type(module).__name__} in {victim.name!r} for the surrogate "
                    "(no reset_parameters); use setting=whitebox"
                )
            reset()
    return net


def distill_surrogate(
    victim: Classifier,
    teacher: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    temperature: float = 10.0,
    alpha: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> Classifier:
    """A full-precision student of the victim's architecture, distilled from ``teacher`` (the adapted model).

    Loss (the authors' Keras distiller): ``alpha·CE(student, y) + (1 − alpha)·KL(softmax(t/T) ‖ softmax(s/T))``.
    The student starts from a fresh initialisation (:func:`reinitialised`), never from the victim's weights.
    """
    student = wrap_like(victim, reinitialised(victim, seed), f"{victim.name}-surrogate").requires_grad_(True)

    def loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
        return alpha * F.cross_entropy(logits, yb) + (1 - alpha) * kl

    train_steps(
        student,
        x,
        y,
        loss,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        gen=make_generator(seed + 1),
        desc="distil surrogate",
        verbose=verbose,
    )
    return student.eval().requires_grad_(False)
