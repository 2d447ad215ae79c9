"""Blended (Chen, Liu, Li, Lu and Song, *Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning*, 2017): the trigger is an image blended over the whole input, ``x' = (1 − α)·x + α·k``.

The paper blends a Hello Kitty image (and random noise); BackdoorBench uses Hello Kitty at α = 0.2. That
image is not ours to ship, so the default key is a generated one: seeded uniform noise at 8×8 upsampled to
the input (a smooth, image-like pattern of the noise variant); ``image`` takes a path to your own (resized
to the input, converted to its channels). ``alpha`` is configurable (default 0.2, BackdoorBench's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from advsuite.errors import ConfigError

from .base import PoisonAttack


@dataclass
class Blended(PoisonAttack):
    paper: ClassVar[str] = "Chen et al., Targeted Backdoor Attacks ... Using Data Poisoning, 2017"

    alpha: float = 0.2
    image: str | None = None
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha <= 1:
            raise ConfigError(f"Blended: alpha must be in (0, 1], got {self.alpha!r}")

    def key(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The blended image for inputs of ``shape`` (C, H, W), in [0, 1]."""
        c, h, w = shape
        if self.image is not None:
            from PIL import Image

            try:
                picture = Image.open(self.image).convert("L" if c == 1 else "RGB")
            except OSError as exc:
                raise ConfigError(f"Blended: cannot read image={self.image!r} ({exc})") from exc
            key = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).float() / 255
            key = key.view(picture.height, picture.width, -1).permute(2, 0, 1)[None]
        else:
            gen = torch.Generator().manual_seed(self.pattern_seed)
            key = torch.rand(1, c, 8, 8, generator=gen)
        return F.interpolate(key, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        key = self.key(tuple(x.shape[1:])).to(x.device, x.dtype)  # type: ignore[arg-type]
        return ((1 - self.alpha) * x + self.alpha * key).clamp(0, 1)
