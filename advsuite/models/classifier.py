"""The ``Classifier``: a network with its normalisation inside, fed [0, 1] images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from advsuite.errors import ModelError
from advsuite.validation import check_images


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; after it, every submodule gets back its own previous mode.

    Restoring module by module (not ``train(was_training)``) keeps a user's network exactly as it came,
    e.g. frozen BatchNorm layers inside a model that is otherwise in training mode.
    """
    modes = [(m, m.training) for m in module.modules()]
    if any(mode for _, mode in modes):  # already in eval mode (every query of an attack): nothing to switch
        module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode


class Classifier(nn.Module):
    """Wraps ``net`` so that callers always pass unnormalised images inside ``bounds``.

    ``forward`` checks the inputs (range and shape), normalises with ``mean``/``std`` (if given),
    runs the network and checks that the logits are finite and of shape (N, num_classes).
    Errors name the model, so a failing run in a sweep says which model broke.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        name: str = "model",
        validate_inputs: bool = True,
        amp: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        # Wrapping never changes the user's module: the wrapper starts in the mode the network is in
        # (nn.Module would start it in training mode, and a later "restore" would push that mode down).
        self.training = net.training
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.name = name
        self.validate_inputs = validate_inputs
        self.amp = amp
        #: provenance filled by the zoo: source, weights hash, clean accuracy, recipe, ...
        self.info: dict[str, object] = {}
        channels = self.input_shape[0]
        self.normalized = mean is not None or std is not None
        mean_t = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std_t = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        if mean_t.numel() == 1:
            mean_t = mean_t.repeat(channels)
        if std_t.numel() == 1:
            std_t = std_t.repeat(channels)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ModelError(f"{name}: mean/std need {channels} values (one per channel)")
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, channels, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return self.mean.device  # a network without parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.validate_inputs:
            check_images(x, bounds=self.bounds, shape=self.input_shape, name=f"inputs to {self.name}")
        z = (x - self.mean) / self.std if self.normalized else x
        try:
            if self.amp and z.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.net(z).float()
            else:
                logits = self.net(z)
        except Exception as exc:  # re-raised with the model and the input shape named
            raise ModelError(
                f"model {self.name!r} raised {type(exc).__name__} in forward on input of shape {tuple(x.shape)}: {exc}"
            ) from exc
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (x.shape[0], self.num_classes):
            seen = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelError(
                f"model {self.name!r} must return logits of shape (N, num_classes) = "
                f"({x.shape[0]}, {self.num_classes}), got {seen}"
            )
        if not torch.isfinite(logits).all():
            raise ModelError(
                f"model {self.name!r} returned NaN or inf logits for {int((~torch.isfinite(logits)).any(1).sum())} "
                f"of {x.shape[0]} inputs; check its weights (a corrupt or diverged checkpoint?)"
            )
        return logits

    @contextmanager
    def evaluating(self) -> Iterator[Classifier]:
        """Eval mode for the duration of an attack; afterwards every submodule gets back its own mode."""
        with eval_mode(self):
            yield self

    @contextmanager
    def trusted_inputs(self) -> Iterator[Classifier]:
        """Skip the input check in ``forward`` inside the block, for inputs the caller has already checked
        or builds inside the bounds itself (an attack's iterates, an oracle's checked queries); the check
        costs a min/max pass over every batch and breaks autograd-free fast paths."""
        previous = self.validate_inputs
        self.validate_inputs = False
        try:
            yield self
        finally:
            self.validate_inputs = previous

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Top-1 labels in eval mode, chunked by ``batch_size``; ``x`` may live on any device."""
        with self.evaluating():
            out = [self(x[i : i + batch_size].to(self.device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def verify(self) -> None:
        """Run one forward pass on a zero image and check the output shape (raises :class:`ModelError`)."""
        with torch.no_grad(), self.evaluating():
            self(torch.zeros(2, *self.input_shape, device=self.device))
