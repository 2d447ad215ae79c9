"""The standard training recipe: SGD/AdamW, cosine schedule with warmup, crop(/flip) augmentation.

Deterministic on CPU for a fixed seed: shuffling and augmentation draw from a seeded generator and the
weight initialisation / dropout use a forked, seeded global RNG (the caller's RNG state is untouched).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from advsuite.adversarial_training import ADV_NORMS, ADVERSARIAL, training_losses
from advsuite.artifacts import content_key
from advsuite.data.bundle import DataBundle, as_tensors
from advsuite.device import resolve_device
from advsuite.errors import ConfigError

if TYPE_CHECKING:  # advsuite.models imports this module (the zoo trains on demand)
    from advsuite.models.classifier import Classifier

#: keys a train config may carry that are not part of the recipe (and so not of the zoo's cache key)
CONTROL_KEYS = ("name", "force")
OPTIMIZERS = ("sgd", "adamw", "lalr")  # lalr: DAT's layer-wise adaptive rate (advsuite.distributed)
SCHEDULES = ("cosine", "constant")
AUGMENTS = ("auto", "none", "crop", "crop_flip")
ROBUST_KEYS = ("adversarial", "adv_eps", "adv_norm", "adv_steps", "adv_step_size", "trades_beta", "adv_eps_warmup")


@dataclass(frozen=True)
class Recipe:
    """How to train a model. ``conf/train/standard.yaml`` lists the defaults; see docs/models.md."""

    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    #: auto: crop + flip for colour images, crop (shift) only for grayscale (no flips for digits)
    augment: str = "auto"
    #: zero-padding of the random crop in pixels; null: 4 at 32 px (size/8), 2 at 28 px (size/14)
    crop_padding: int | None = None
    #: train/evaluate on a seeded random subset of this many images (tests, quick looks); null: all
    train_subset: int | None = None
    test_subset: int | None = None
    #: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); ignored on CPU
    amp: bool = True
    eval_batch_size: int = 512
    #: train splits up to this size are held as one tensor on the device; bigger ones stream via a DataLoader
    in_memory_max_mb: int = 2048
    num_workers: int = 0
    #: robust training (advsuite.adversarial_training): none | pgd (Madry) | trades | fast (FGSM, Wong et al.)
    adversarial: str = "none"
    adv_eps: float = 0.0
    adv_norm: str = "linf"
    adv_steps: int = 10
    #: null: 2.5·eps/steps (pgd, trades), 1.25·eps (fast)
    adv_step_size: float | None = None
    trades_beta: float = 6.0
    #: epochs over which the attack's eps (and an absolute step size) ramps linearly up to ``adv_eps``; 0: the
    #: full eps from the first step, as the papers. A ramp lets a short CPU run at a large eps (MNIST 0.3) learn
    #: at all instead of sitting at chance.
    adv_eps_warmup: float = 0.0

    @classmethod
    def coerce(cls, recipe: Recipe | Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> Recipe:
        """A validated recipe from a mapping (e.g. a Hydra ``train`` config) plus ``overrides``."""
        base = dataclasses.asdict(recipe) if isinstance(recipe, Recipe) else dict(recipe or {})
        merged = {k: v for k, v in {**base, **dict(overrides or {})}.items() if k not in CONTROL_KEYS}
        trainer = merged.pop("trainer", "standard")
        if trainer == "dat":  # distributed adversarial training: its own keys (advsuite.distributed.recipe)
            from advsuite.distributed.recipe import coerce_dat

            return coerce_dat({**merged, "trainer": trainer})
        if trainer != "standard":
            raise ConfigError(f"unknown train.trainer {trainer!r}; choose standard or dat")
        return cls.from_keys(merged)

    @classmethod
    def from_keys(cls, merged: Mapping[str, Any], what: str = "training recipe") -> Self:
        """``cls(**merged)``, validated; an unknown key is refused with the valid ones."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - fields)
        if unknown:
            raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {', '.join(sorted(fields))}")
        out = cls(**merged)
        out.validate()
        return out

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch norm needs two samples)"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs must be in [0, epochs)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.crop_padding is None or self.crop_padding >= 0, "crop_padding must be >= 0 or null"),
            (self.train_subset is None or self.train_subset >= 2, "train_subset must be >= 2 or null"),
            (self.test_subset is None or self.test_subset >= 1, "test_subset must be >= 1 or null"),
            (self.adversarial in ADVERSARIAL, f"adversarial must be one of {ADVERSARIAL}"),
            (self.adversarial == "none" or self.adv_eps > 0, f"adversarial={self.adversarial} needs adv_eps > 0"),
            (self.adv_norm in ADV_NORMS, f"adv_norm must be one of {ADV_NORMS}"),
            (self.adv_steps >= 1, "adv_steps must be >= 1"),
            (self.adv_step_size is None or self.adv_step_size > 0, "adv_step_size must be > 0 or null"),
            (self.trades_beta >= 0, "trades_beta must be >= 0"),
            (0 <= self.adv_eps_warmup <= self.epochs, "adv_eps_warmup must be in [0, epochs]"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError(f"bad training recipe {self.to_dict()}: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, extra: Mapping[str, Any] | None = None) -> str:
        """Short hash of the recipe (plus ``extra``, e.g. arch kwargs), the zoo's cache key.

        The robust-training keys enter only when ``adversarial`` is on, so standard models keep the keys
        they had before those keys existed."""
        recipe = self.to_dict()
        if self.adversarial == "none":
            recipe = {k: v for k, v in recipe.items() if k not in ROBUST_KEYS}
        elif not self.adv_eps_warmup:  # models trained before the ramp existed keep their keys
            recipe.pop("adv_eps_warmup")
        return content_key({"recipe": recipe, **dict(extra or {})})


# ------------------------------------------------------------------------------------------------ data


def subset_indices(n: int, keep: int | None, seed: int) -> torch.Tensor | None:
    """A seeded random subset (the embedded splits are ordered by class, so the first k would be one class)."""
    if keep is None or keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def _in_memory(dataset: Dataset, shape: tuple[int, ...], limit_mb: int) -> bool:
    if isinstance(dataset, TensorDataset):
        return True
    return len(dataset) * math.prod(shape) * 4 <= limit_mb * 2**20  # type: ignore[arg-type]


def _batches(
    dataset: Dataset, indices: torch.Tensor | None, recipe: Recipe, shape: tuple[int, ...], gen: torch.Generator
) -> tuple[int, Any]:
    """``(n, epoch_iter)``: ``epoch_iter(device)`` yields shuffled (x, y) batches for one epoch."""
    if _in_memory(dataset, shape, recipe.in_memory_max_mb):
        x, y = as_tensors(dataset)
        if indices is not None:
            x, y = x[indices], y[indices]
        held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def epoch(device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            if str(device) not in held:  # move once, not every epoch
                held.clear()
                held[str(device)] = (x.to(device), y.to(device))
            xd, yd = held[str(device)]
            order = torch.randperm(len(xd), generator=gen)
            for batch in _split(order, recipe.batch_size):
                batch = batch.to(device)
                yield xd[batch], yd[batch]

        return len(x), epoch
    source = Subset(dataset, indices.tolist()) if indices is not None else dataset
    loader = DataLoader(
        source,
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=recipe.num_workers,
        drop_last=len(source) % recipe.batch_size == 1,  # type: ignore[arg-type]
    )

    def stream(device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in loader:
            yield xb.float().to(device, non_blocking=True), torch.as_tensor(yb).long().to(device)

    return len(source), stream  # type: ignore[arg-type]


def _split(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    parts = list(order.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:  # a batch of one breaks batch norm
        parts.pop()
    return parts


# ------------------------------------------------------------------------------------------ augmentation


def augmentation_plan(recipe: Recipe, shape: tuple[int, ...]) -> tuple[int, bool]:
    """``(crop_padding, flip)`` for the recipe and an input shape (C, H, W)."""
    channels, size = shape[0], min(shape[1:])
    mode = recipe.augment
    if mode == "auto":
        mode = "crop_flip" if channels == 3 else "crop"  # digits and other grayscale: never flip
    if mode == "none":
        return 0, False
    default = max(1, size // 8) if channels == 3 else max(1, size // 14)
    padding = recipe.crop_padding if recipe.crop_padding is not None else default
    return padding, mode == "crop_flip"


def augment_batch(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero-padding (a shift of up to ``padding`` px) and optional horizontal flip, batched."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# ---------------------------------------------------------------------------------------- optimisation


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # no weight decay on biases and norm parameters (standard for BN nets; it only slows them down)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if recipe.optimizer == "lalr":
        from advsuite.distributed.lalr import LALR

        return LALR(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def ramped(recipe: Recipe, step: int, ramp_steps: int) -> Recipe:
    """The recipe for ``step``: eps (and an absolute step size) scaled by the ``adv_eps_warmup`` ramp."""
    if step >= ramp_steps:
        return recipe
    scale = (step + 1) / ramp_steps
    size = None if recipe.adv_step_size is None else recipe.adv_step_size * scale
    return dataclasses.replace(recipe, adv_eps=recipe.adv_eps * scale, adv_step_size=size)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_accuracy(
    model: Classifier,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    limit: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[float, int]:
    """``(accuracy, n)`` of ``model`` on ``dataset`` (or a seeded random subset of ``limit`` images), in eval mode."""
    if device is not None:
        model.to(resolve_device(device))
    indices = subset_indices(len(dataset), limit, seed)  # type: ignore[arg-type]
    source = Subset(dataset, indices.tolist()) if indices is not None else dataset
    correct = total = 0
    with model.evaluating():
        if isinstance(source, TensorDataset) or isinstance(dataset, TensorDataset):
            x, y = as_tensors(dataset)
            if indices is not None:
                x, y = x[indices], y[indices]
            chunks: Any = zip(x.split(batch_size), y.split(batch_size), strict=True)
        else:
            chunks = DataLoader(source, batch_size=batch_size, shuffle=False)
        for xb, yb in chunks:
            pred = model(xb.float().to(model.device)).argmax(1).cpu()
            correct += int((pred == torch.as_tensor(yb)).sum())
            total += len(pred)
    return (correct / total if total else float("nan")), total


# ------------------------------------------------------------------------------------------------ train

#: steps timed (after the first) before the whole training's duration is estimated and printed
ESTIMATE_AFTER_STEPS = 5


def _estimate(name: str, per_step: float, total: int, recipe: Recipe, n_train: int) -> str:
    """One line: how long the whole training will take at the first steps' pace, and how to make it shorter."""
    left = per_step * total
    when = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    return (
        f"training {name}: {recipe.epochs} epochs x {total // recipe.epochs} steps on {n_train:,} images, "
        f"about {when} in all at the first steps' pace (shorter: train.epochs=N, train.train_subset=N; "
        "the trained model is cached for later runs)"
    )


def train_classifier(
    model: Classifier,
    data: DataBundle,
    recipe: Recipe | Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    verbose: bool = True,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train`` and evaluate it on ``data.test``.

    ``on_epoch(epoch, model, lr)`` is called after each epoch (1-based) with the mean learning rate of its steps
    (e.g. to keep snapshots for TracIn-style influence); the standard trainer only.

    ``checkpoint_dir``: where ``train=dat`` keeps the checkpoints a killed run resumes from (the standard
    recipe trains in one go).

    Returns ``test_accuracy``, ``n_test``, ``train_accuracy``/``train_loss`` (last epoch, on augmented
    data), ``train_seconds``, ``epochs``, ``steps``, ``n_train``, ``device``. The model ends in eval mode.
    """
    recipe = Recipe.coerce(recipe)
    if getattr(recipe, "trainer", "standard") == "dat":
        from advsuite.distributed.dat import train_dat

        return train_dat(model, data, recipe, device=device, seed=seed, verbose=verbose,  # type: ignore[arg-type]
                         checkpoint_dir=checkpoint_dir)  # fmt: skip
    device = resolve_device(device)
    model.to(device)
    shape = tuple(data.input_shape)
    gen = torch.Generator().manual_seed(seed)
    indices = subset_indices(len(data.train), recipe.train_subset, seed)  # type: ignore[arg-type]
    n_train, epoch_batches = _batches(data.train, indices, recipe, shape, gen)
    steps_per_epoch = max(1, n_train // recipe.batch_size + int(n_train % recipe.batch_size > 1))
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    padding, flip = augmentation_plan(recipe, shape)
    optimizer = _optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, recipe.schedule))
    use_amp = recipe.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    ramp_steps = round(recipe.adv_eps_warmup * steps_per_epoch)
    start = after_first = time.perf_counter()
    loss_sum, correct, seen, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0
    clean_sum = adv_sum = 0.0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # dropout and anything else drawing from the global RNG
        bar = tqdm(total=total, desc=f"train {model.name}", unit="step", disable=not verbose, leave=verbose)
        model.train()
        for epoch in range(recipe.epochs):
            loss_sum.zero_(), correct.zero_()
            seen, clean_sum, adv_sum = 0, 0.0, 0.0
            lr_sum, epoch_steps = 0.0, 0
            for xb, yb in epoch_batches(device):
                xb = augment_batch(xb, padding, flip, gen)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, logits, clean, adv = training_losses(
                        model, xb, yb, ramped(recipe, steps, ramp_steps), gen, loss_fn
                    )
                if adv is not None:
                    clean_sum, adv_sum = clean_sum + clean * len(yb), adv_sum + adv * len(yb)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr_sum, epoch_steps = lr_sum + float(scheduler.get_last_lr()[0]), epoch_steps + 1
                scheduler.step()
                loss_sum += loss.detach() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(yb)
                steps += 1
                bar.update(1)
                if steps == 1:
                    after_first = time.perf_counter()  # the first step pays for allocation and kernel set-up
                elif verbose and steps == 1 + ESTIMATE_AFTER_STEPS and total > 2 * steps:
                    per_step = (time.perf_counter() - after_first) / ESTIMATE_AFTER_STEPS
                    tqdm.write(_estimate(model.name, per_step, total, recipe, n_train))
                if verbose and (steps % 10 == 0 or seen >= n_train):
                    shown = {"epoch": epoch + 1, "loss": f"{float(loss_sum) / seen:.3f}"}
                    if recipe.adversarial != "none":
                        shown |= {"clean_ce": f"{clean_sum / seen:.3f}", "adv_ce": f"{adv_sum / seen:.3f}"}
                    bar.set_postfix(shown | {"acc": f"{float(correct) / seen:.3f}"})
            if on_epoch is not None:
                on_epoch(epoch + 1, model, lr_sum / max(1, epoch_steps))
            if verbose and recipe.adversarial != "none":
                tqdm.write(f"{model.name} epoch {epoch + 1}: clean CE {clean_sum / max(1, seen):.3f}, "
                           f"{recipe.adversarial} adversarial CE {adv_sum / max(1, seen):.3f}")  # fmt: skip
        bar.close()
    train_seconds = time.perf_counter() - start
    model.eval()
    accuracy, n_test = evaluate_accuracy(
        model, data.test, batch_size=recipe.eval_batch_size, limit=recipe.test_subset, seed=seed
    )
    info = {
        "test_accuracy": accuracy,
        "n_test": n_test,
        "train_accuracy": float(correct) / max(1, seen),
        "train_loss": float(loss_sum) / max(1, seen),
        "train_seconds": round(train_seconds, 2),
        "epochs": recipe.epochs,
        "steps": steps,
        "n_train": n_train,
        "device": str(device),
    }
    if recipe.adversarial != "none":  # the last epoch's clean and adversarial cross-entropy
        info |= {"train_clean_ce": clean_sum / max(1, seen), "train_adv_ce": adv_sum / max(1, seen)}
    return info
