"""Face embedders: f(x) -> an embedding, compared by cosine similarity at a threshold fixed at a FAR.

- a zoo model trained to classify the *training* identities (the usual way to train a face embedder, as
  FaceNet/ArcFace are trained on identity labels): its embedding is the input of its last linear layer;
- ``model=custom`` trained or loaded the same way (any network whose last linear layer is the classifier);
- a user's own embedding network, ``{target: pkg.mod:factory, kwargs: {...}, checkpoint: path}`` (or
  ``model=custom model.target=... +model.embedding=true``): its output is the embedding (inputs in [0, 1], as
  every advsuite model takes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advsuite.errors import ConfigError, ModelError
from advsuite.models.classifier import Classifier
from advsuite.models.custom import call_import_path


class PenultimateEmbedder(nn.Module):
    """The input of a classifier's last ``nn.Linear`` (normalisation and all layers before it included)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        linears = [m for m in classifier.net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError(f"{classifier.name!r} has no linear layer whose input could serve as the embedding")
        self.classifier = classifier
        self.name = classifier.name
        self._head = linears[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self._head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            with self.classifier.trusted_inputs():
                self.classifier(x)
        finally:
            hook.remove()
        return captured[0].flatten(1)


class CustomEmbedder(nn.Module):
    """A user's embedding network given by import path, optionally with a checkpoint."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        target = spec.get("target")
        self.net = call_import_path(str(target), "embedder", spec.get("kwargs"))
        if not isinstance(self.net, nn.Module):
            raise ConfigError(f"embedder target {target!r} did not return an nn.Module")
        if checkpoint := spec.get("checkpoint"):
            self.net.load_state_dict(read_state(Path(str(checkpoint)).expanduser()))
        self.name = str(spec.get("name") or str(target).rsplit(":", 1)[-1])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"embedder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def is_custom_embedder(spec: Any) -> bool:
    """``{target: ...}`` without an ``arch``, or ``model=custom`` with ``+model.embedding=true``."""
    if not isinstance(spec, Mapping) or "target" not in spec:
        return False
    return "arch" not in spec or (spec.get("arch") == "custom" and bool(spec.get("embedding")))
