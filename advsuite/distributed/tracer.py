"""The tracer: every traced tensor of a training step under a canonical key, so a distributed run can be
compared tensor by tensor with a single-device reference (TTrace, Jiang et al., arXiv 2506.09280).

Attach it with a few lines::

    tracer = Tracer(model, optimizer)          # hooks every leaf module and the optimizer
    for step, (x, y) in enumerate(batches):
        with tracer.step(step):
            loss_fn(model(x), y).backward()
            optimizer.step()
    tracer.trace().save(out_dir)               # safetensors, or compare in memory (advsuite.distributed.checker)

Collected per step (and micro-batch, :meth:`Tracer.micro`): each leaf module's output (``output``) and the
gradient flowing into it (``output_grad``), each parameter's gradient when the optimizer steps
(``param_grad``) and the parameter after it (``param``). DAT also records ``input`` and ``adv_input`` (a
worker's batch and its adversarial examples), ``buffer`` (BatchNorm statistics after the step) and, under a
gathering compressor, ``local_grad`` (a process's gradient before the exchange, ``rank<r>/<parameter>``).
Keys name the module path with wrapper prefixes removed (``module.`` of DDP, ``_orig_mod.`` of torch.compile,
FSDP's wrapped-module names), and a sharded FSDP2 tensor (a DTensor) is gathered back to its full layout, so
every run keys and shapes its tensors alike.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: in execution order within a worker's micro-batch, then after the step (micro = the number of workers)
KINDS = ("input", "adv_input", "output", "output_grad", "local_grad", "param_grad", "param", "buffer")
_WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)(?=\.|$)")
_KEY = re.compile(r"^s(\d+)/m(\d+)/(.*):(\w+)$")


def canonical_name(path: str) -> str:
    """``path`` without the segments wrappers add (``module.net.0`` -> ``net.0``)."""
    return _WRAPPERS.sub("", path).lstrip(".")


def to_canonical(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy in the full (unsharded) layout."""
    full = getattr(tensor, "full_tensor", None)
    if callable(full):  # an FSDP2 / DTensor shard: gather the whole tensor
        tensor = full()
    return tensor.detach().to("cpu", copy=True)


@dataclass(frozen=True, order=True)
class TraceKey:
    """Where a tensor was traced: step, micro-batch, module path, kind."""

    step: int
    micro: int
    path: str
    kind: str

    def __str__(self) -> str:
        return f"s{self.step:05d}/m{self.micro:02d}/{self.path}:{self.kind}"

    @classmethod
    def parse(cls, text: str) -> TraceKey:
        match = _KEY.match(text)
        if match is None:
            raise ValueError(f"not a trace key: {text!r}")
        return cls(int(match[1]), int(match[2]), match[3], match[4])


@dataclass
class Trace:
    """Traced tensors in the order they were recorded, and each module path's layer index (1 = first run)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)

    def layer_of(self, key: str) -> int:
        path = TraceKey.parse(key).path.rsplit("/", 1)[-1]  # a scoped path ("clean/net.0"): its module's layer
        while path not in self.layers and "." in path:  # a parameter: its module's layer
            path = path.rsplit(".", 1)[0]
        return self.layers.get(path, len(self.layers))

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "trace.safetensors"
        tensors = {k: t.contiguous() for k, t in self.tensors.items()}
        save_file(tensors, str(path), metadata={"order": json.dumps(list(tensors)), "layers": json.dumps(self.layers)})
        return path

    @classmethod
    def load(cls, folder: Path) -> Trace:
        from safetensors import safe_open

        with safe_open(str(folder / "trace.safetensors"), framework="pt") as f:
            meta = f.metadata()
            order = json.loads(meta["order"])
            return cls({k: f.get_tensor(k) for k in order}, json.loads(meta["layers"]))


class Tracer:
    """Collects :data:`KINDS` tensors of ``module`` (and of ``optimizer``'s steps) inside :meth:`step`."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer | None = None, kinds: Iterable[str] = KINDS):
        self.kinds = set(kinds)
        if unknown := self.kinds - set(KINDS):
            raise ValueError(f"unknown trace kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
        self._trace = Trace()
        self._step: int | None = None
        self._micro = 0
        self._paused = False
        self._scope = ""
        #: the factor the traced loss was multiplied by before backward (a worker's share of a process's loss);
        #: activation gradients are recorded divided by it, so runs that split the batch differently agree
        self.grad_scale = 1.0
        self._names = {id(p): canonical_name(n) for n, p in module.named_parameters()}
        self._handles: list[Any] = []
        for name, sub in module.named_modules():
            if name and not any(True for _ in sub.children()):
                self._handles.append(sub.register_forward_hook(self._forward_hook(canonical_name(name))))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, *_: self._params(opt, "param_grad")))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, *_: self._params(opt, "param")))

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        self._step, self._micro = step, 0
        try:
            yield
        finally:
            self._step = None

    @contextlib.contextmanager
    def micro(self, index: int) -> Iterator[None]:
        previous, self._micro = self._micro, index
        try:
            yield
        finally:
            self._micro = previous

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing traced inside (e.g. the forward and backward passes of an attack inside a training step)."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Module paths recorded inside are prefixed ``name/`` (a second forward pass of the same batch)."""
        previous, self._scope = self._scope, f"{name}/"
        try:
            yield
        finally:
            self._scope = previous

    def record(self, path: str, kind: str, tensor: torch.Tensor) -> None:
        """Record one tensor (inside :meth:`step`; elsewhere nothing is traced)."""
        if self._step is None or self._paused or kind not in self.kinds:
            return
        key = str(TraceKey(self._step, self._micro, path, kind))
        self._trace.tensors[key] = to_canonical(tensor)

    def trace(self) -> Trace:
        return self._trace

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._step is None or self._paused or not isinstance(output, torch.Tensor):
                return
            self._trace.layers.setdefault(path, len(self._trace.layers) + 1)
            scoped = self._scope + path
            self.record(scoped, "output", output)  # a copy: a later in-place op (ReLU(inplace)) would change it
            if output.requires_grad and "output_grad" in self.kinds:
                step, micro = self._step, self._micro
                output.register_hook(lambda g: self._grad(step, micro, scoped, g))

        return hook

    def _grad(self, step: int, micro: int, path: str, grad: torch.Tensor) -> None:
        self._trace.tensors[str(TraceKey(step, micro, path, "output_grad"))] = to_canonical(grad) / self.grad_scale

    def _params(self, optimizer: torch.optim.Optimizer, kind: str) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                tensor = p.grad if kind == "param_grad" else p
                if tensor is not None and id(p) in self._names:
                    self.record(self._names[id(p)], kind, tensor)
