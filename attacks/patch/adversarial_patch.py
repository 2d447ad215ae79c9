"""The universal adversarial patch, trained with expectation over transformations.

Brown, Mané, Roy, Abadi, Gilmer, "Adversarial Patch", arXiv 1712.09665 (2017); the EOT formulation as in
Karmon, Zoran, Goldberg, "LaVAN: Localized and Visible Adversarial Noise", ICML 2018 (arXiv 1801.02608).

The patch p (C × s × s, values in [0, 1], square or circular) maximises

    E_{x ~ X, t ~ T, l ~ L} [ log Pr(ŷ | A(p, x, l, t)) ]

over training images x, transformations t (scale, rotation) and locations l, where A pastes the
transformed patch onto the image. Each optimisation step draws a fresh t and l per image (batched with
``affine_grid``/``grid_sample``) and takes one Adam step on the pixels, which are clipped to [0, 1].
Untargeted patches maximise the cross-entropy of the true label instead.

Fitting is lazy: ``task=evaluate`` calls :meth:`prepare` (which keeps the dataset), and the first call of
:meth:`run` fits the patch on ``n_train`` training images (a seeded random subset) using the white-box
model it is given, caching it on the instance keyed on that model; later chunks reuse it. At evaluation
each (correctly classified, test) image gets the fitted patch at a seeded random position (plus scale and
rotation when ``eval_transforms``). ``size`` may be a list: one patch per size, ``x_adv`` holds the largest, and
``extra_metrics`` reports ``patch_success@<size>`` for each (the success-vs-size curve of Brown et al.'s
Fig. 2).

Defaults and where they differ from the papers:

- ``size`` is a fraction of the image area, as Brown et al. report it; the default list [0.05, 0.1, 0.15]
  spans the part of their curve where a patch goes from weak to dominant on small images.
- rotation ±22.5° and scale ×[0.8, 1.2] of the nominal side; Brown et al. rotate by up to 45° and scale
  the patch over a wider range (1–25 % of the image) on 299-pixel ImageNet images, where a 28–32 pixel
  image has too few pixels for the patch to shrink that much.
- Adam (lr 0.05) on the raw pixels with clipping; the papers do not fix an optimiser for this setting.
- training set: a seeded random subset of ``n_train`` (2,000) training images, 5 epochs; the paper trains on ImageNet.

Queries: fitting costs one forward+backward pass per training image per epoch; that count is in
``extras["fit_queries"]`` and in the metric ``patch_fit_queries`` (it is spent once for all test images).
Per test image the attack makes one forward pass (the success check), which is its per-sample ``queries``.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from advsuite.attack import Access, PrepareContext
from advsuite.errors import ConfigError, InputError
from advsuite.models.classifier import Classifier
from advsuite.seeding import make_generator
from advsuite.validation import check_images, check_int, check_labels, check_number

from .base import UniversalPatchAttack, objective, training_images


@dataclass
class AdversarialPatch(UniversalPatchAttack):
    """Brown et al.'s universal adversarial patch (EOT over location, scale and rotation); white-box."""

    access: ClassVar[Access] = "whitebox"

    size: float | list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15])
    epochs: int = 5
    lr: float = 0.05

    _data: Any = field(default=None, init=False, repr=False, compare=False)
    _train: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _model_ref: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(type(self).__name__, "epochs", self.epochs, 1)
        check_number(type(self).__name__, "lr", self.lr)

    def prepare(self, context: PrepareContext) -> None:
        """Keep the run's dataset: the patch is fitted on its training split at the first :meth:`run`."""
        self._data = context.data
        self._train = None

    # ------------------------------------------------------------------------------------- fitting

    def fit(
        self,
        model: Classifier,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        *,
        size: float | None = None,
        target: int | None = None,
    ) -> torch.Tensor:
        """Fit a patch on ``(x_train, y_train)`` against ``model``; returns it, (C, s, s) in [0, 1], on the
        model's device, and caches it for later :meth:`run` calls with this model.

        ``size`` defaults to the largest configured size; ``target`` to ``target_class`` (None: untargeted).
        """
        check_images(x_train, bounds=model.bounds, shape=model.input_shape, name="x_train")
        check_labels(y_train, len(x_train), model.num_classes, name="y_train")
        size = self.sizes[-1] if size is None else float(size)
        target = self.target_class if target is None else int(target)
        if target is not None and not 0 <= target < model.num_classes:
            raise InputError(f"target {target} is not a class of the model (0..{model.num_classes - 1})")
        self._remember(model)
        side = self.side(size, model.input_shape)
        with model.evaluating():
            patch = self._fit(model, *self._train_subset(x_train, y_train, target), side, target)
        self._cache[(id(model), side, target)] = patch
        return patch

    def _remember(self, model: Classifier) -> None:
        """Forget cached patches when they were fitted against another model object."""
        if self._model_ref is None or self._model_ref() is not model:
            self._cache.clear()
            self._model_ref = weakref.ref(model)

    def _fit(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, side: int, target: int | None) -> torch.Tensor:
        device = model.device
        c = model.input_shape[0]
        patch = torch.rand(c, side, side, generator=make_generator(self.seed)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        order = make_generator(self.seed)  # shuffling, on the CPU where the training images are
        gen = make_generator(self.seed, device)  # transformations
        losses: list[float] = []
        queries = 0
        start = time.perf_counter()
        with model.trusted_inputs(), torch.enable_grad():  # the composite stays in [0, 1]
            for _ in range(self.epochs):
                total = 0.0
                for batch in torch.randperm(len(x), generator=order).split(self.batch_size):
                    xb = x[batch].to(device)
                    labels = (y[batch] if target is None else torch.full((len(batch),), target)).to(device)
                    value = objective(model(self.eot(xb, patch, gen)), labels, target is not None)
                    opt.zero_grad(set_to_none=True)
                    (-value.mean()).backward()
                    opt.step()
                    with torch.no_grad():
                        patch.clamp_(0, 1)
                    queries += len(batch)
                    total += float(value.detach().sum())
                losses.append(total / len(x))
        self.fit_log[(side, target)] = {
            "queries": queries,
            "objective_per_epoch": losses,
            "seconds": time.perf_counter() - start,
            "n_train": len(x),
        }
        return patch.detach()

    def _train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            if self._data is None:
                raise ConfigError(
                    f"{type(self).__name__}: no training data; call attack.prepare(PrepareContext(data=...)) "
                    "or attack.fit(model, x_train, y_train) before attacking"
                )
            self._train = training_images(self._data, self.n_train, self.seed)
        return self._train

    def _patch(self, model: Classifier, size: float, target: int | None) -> torch.Tensor:
        self._remember(model)
        side = self.side(size, model.input_shape)
        key = (id(model), side, target)
        if key not in self._cache:
            x, y = self._train_data()
            self.fit(model, x, y, size=size, target=target)  # target None only when target_class is None
        return self._cache[key]

    def _labels(self, target: Classifier, x_adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return target(x_adv).argmax(1)
