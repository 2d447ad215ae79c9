"""Users' own models on the command line: ``model=custom model.target=my_pkg.nets:MyNet``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from advsuite.errors import ConfigError, ModelError
from advsuite.models.classifier import Classifier

#: the ``arch`` of a user's model given by import path
CUSTOM = "custom"


def resolve_import_path(target: str, group: str = "model") -> Callable[..., Any]:
    """``package.module:attribute`` or ``package.module.attribute`` -> the object; errors name the path
    as ``<group>.target`` (``model``, ``defense``)."""
    if not target or not isinstance(target, str):
        raise ConfigError(f"{group}=custom needs {group}.target=<package.module:factory_or_class>")
    module_name, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{group}.target={target!r} is not an import path like 'my_pkg.nets:MyNet'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{group}.target={target!r}: cannot import module {module_name!r} ({exc}); "
            "is its package installed or on PYTHONPATH?"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{group}.target={target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{group}.target={target!r} is not a class or factory function")
    return obj


def call_import_path(target: str, group: str, kwargs: Mapping[str, Any] | None, *args: Any) -> Any:
    """``factory(*args, **kwargs)`` for the factory or class at ``target``; a call its signature refuses is a
    :class:`ConfigError` naming ``<group>.target`` and ``<group>.kwargs``."""
    factory = resolve_import_path(target, group=group)
    try:
        return factory(*args, **dict(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"{group}.target={target!r} rejected {group}.kwargs={dict(kwargs or {})}: {exc}") from exc


def build_custom(target: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Call the factory or class at ``target`` with ``kwargs``; it must return an ``nn.Module``."""
    net = call_import_path(target, "model", kwargs)
    if not isinstance(net, nn.Module):
        raise ModelError(f"model.target={target!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def build_custom_classifier(spec: Mapping[str, Any], data: Any) -> Classifier:
    """The user's network as a Classifier for ``data``; one forward pass checks its output shape.

    ``spec.mean``/``spec.std`` give the normalisation the network expects (default: the dataset's).
    """
    target = str(spec["target"])
    net = build_custom(target, spec.get("kwargs"))
    model = Classifier(
        net,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        mean=spec.get("mean") or data.mean,
        std=spec.get("std") or data.std,
        name=target,
        amp=bool(spec.get("amp", False)),
    )
    model.verify()
    model.info = {
        "arch": CUSTOM,
        "dataset": data.name,
        "model_source": target,
        "adaptation": {"arch": CUSTOM, "target": target, "kwargs": dict(spec.get("kwargs") or {})},
    }
    return model
