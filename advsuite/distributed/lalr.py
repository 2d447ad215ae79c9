"""LALR, the layer-wise adaptive learning rate of DAT (Zhang et al., *Distributed Adversarial Training to
Robustify Deep Neural Networks at Scale*, UAI 2022), a LAMB-style update (You et al., ICLR 2020).

Per parameter tensor (a "layer"): Adam's moments ``m`` and ``v``, the update ``u = m / (sqrt(v) + eps) + wd·w``,
and a trust ratio ``r = min(||w||, max_weight_norm) / ||u||`` (1 where either norm is 0), so every layer moves
by ``lr·r`` relative to its own weight norm whatever the batch size. As in the authors' code: no bias
correction (``bias_correction=True`` adds Adam's), ``betas`` (0.9, 0.999), weight decay 1e-4 inside the update,
the weight norm clamped to [0, 10]. torch has no LAMB, hence this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from advsuite.errors import ConfigError

from .sharding import layer_norm, local


class LALR(torch.optim.Optimizer):
    """LAMB-style layer-wise adaptive learning rate (see the module docstring). Works on FSDP-sharded
    parameters: each process updates its shard, with the norms of the whole layer."""

    #: the injected bug ``lalr_local_norm`` (advsuite.distributed.bugs) sets it; never True otherwise
    shard_local_norms = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 1e-4,
        max_weight_norm: float = 10.0,
        bias_correction: bool = False,
    ) -> None:
        checks = [
            (lr > 0, f"lr must be > 0, got {lr}"),
            (all(0 <= b < 1 for b in betas), f"betas must be in [0, 1), got {betas}"),
            (eps > 0, f"eps must be > 0, got {eps}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (max_weight_norm > 0, f"max_weight_norm must be > 0, got {max_weight_norm}"),
        ]
        if problems := [message for ok, message in checks if not ok]:
            raise ConfigError("LALR: " + "; ".join(problems))
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "max_weight_norm": max_weight_norm, "bias_correction": bias_correction}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p, dtype=torch.float32)
                    state["v"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                # this process's shard of an FSDP parameter (the whole tensor otherwise); norms are the layer's
                w, m, v, g = local(p), local(state["m"]), local(state["v"]), local(p.grad).float()
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat, v_hat = m, v
                if group["bias_correction"]:
                    m_hat = m / (1 - beta1 ** state["step"])
                    v_hat = v / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * w.float()
                w_norm = layer_norm(w, p, shard_local=self.shard_local_norms).clamp(0, group["max_weight_norm"])
                u_norm = layer_norm(update, p, shard_local=self.shard_local_norms)
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                w.add_((-group["lr"] * trust * update).to(w.dtype))
        return loss
