"""A DCGAN-like generator trained as a WGAN, after NonLinear-BA's GAN probe prior (trained there on
reference-model input gradients).

Paper: H. Li, L. Li, X. Xu, X. Zhang, S. Yang, B. Li, "Nonlinear Projection Based Gradient Estimation for
Query Efficient Blackbox Attacks", AISTATS 2021 (code: AI-secure/NonLinear-BA, ``src/models/gan_generator.py``).
Written from the design notes, not from the authors' code.

Generator: z in R^latent_dim as a 1x1 map -> ConvTranspose to a ``b_h x b_w`` base map (LeakyReLU 0.2, as the
authors' first block) -> ``n_up`` blocks of ConvTranspose(4, stride 2, pad 1) doubling the size with BN + ReLU;
the last one maps to C channels and ends in **tanh**; a bilinear resize to (H, W) follows when the size is not
``b * 2^n_up`` (e.g. 29). ``n_up = floor(log2(min(H, W) / 4))`` and ``b = ceil(side / 2^n_up)`` in [4, 8): 7 -> 14
-> 28 for MNIST, 4 -> 8 -> 16 -> 32 for CIFAR-10, 7 -> 14 -> ... -> 224 for ImageNet. Critic (training only, not
part of the prior's state): strided 4x4 convs with LeakyReLU 0.2 down to <= 4x4, then a conv over the remaining
map to one score.

Training (:func:`fit_gan`): WGAN with weight clipping +-0.01 on the critic, RMSprop for critic and generator, one
critic step per generator step (``D_ITERS = G_ITERS = 1``); real data = gradients normalised to unit L2 (as the
authors' preprocessing). Probes (:meth:`GAN.sample`): z ~ N(0, I), G(z).

Where the defaults differ from the authors' (CPU-sized: ~4,000 28x28 gradients in about a minute on 2 cores;
the authors train at 224x224 on a GPU, 200 epochs):

* the authors go 1 -> 4 (ConvT 4) -> 7 (ConvT 3, stride 2) at 224; we go from 1x1 straight to the base size
  (ConvT with kernel b), which gives the same 7 -> 14 -> ... -> 224 chain with one layer fewer;
* widths: authors 128, 64, 64, 32, 32, 16 (4x4 .. 112x112); ours halve from 64 with a floor of 16
  (``[64, 32]`` for 28x28, ``[64, 32, 16]`` for 32x32); critic widths 16, 32, 64, ... (cap 128) as the authors';
* ``latent_dim`` None -> d / 16 (the authors' 9408 at 224x224x3; 49 for MNIST, 192 for CIFAR-10);
* 15 epochs instead of 200 (lr 5e-5 as the authors'; in a 10-epoch run on a synthetic low-frequency 28x28 set
  it gave samples closer to the data than 2e-4).

The convolutions have no bias (as DCGAN's): a clipped bias of up to 0.01 would swamp the critic's response to
unit-L2 inputs, whose entries are ~1/sqrt(d) (0.036 for MNIST); with bias the critic learned nothing.

Known limitation: weight-clipped WGAN is fragile at this budget. On a synthetic 4,000 x 1 x 28 x 28 set the
default run gives varied, data-like samples; on 4,000 x 3 x 32 x 32 it mode-collapsed (probes nearly parallel)
for three seeds, lr 1e-4, wider generator widths and a batch-norm critic alike. Check the probes' diversity
(mean |cos| between samples) before using a trained GAN prior.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advsuite.device import resolve_device
from advsuite.errors import ConfigError

from .autoencoder import as_gradient_tensor, unit_l2
from .base import GenerativeModel


def gan_geometry(height: int, width: int) -> tuple[int, int, int]:
    """(n_up, base_h, base_w): number of 2x up-samplings and the base map size (in [4, 8) on the short side)."""
    side, n_up = min(height, width), 0
    while side >= 4 * 2 ** (n_up + 1):
        n_up += 1
    return n_up, math.ceil(height / 2**n_up), math.ceil(width / 2**n_up)


class GAN(GenerativeModel):
    """NonLinear-BA's GAN prior (``NLBA-GAN``): a DCGAN-like generator G(z), z ~ N(0, I_latent_dim).

    Args:
        input_shape: (C, H, W).
        latent_dim: size of z; None: d / 16 (at least 1).
        widths: channels of the base map and of each up-sampled map before the last block (``n_up`` entries);
            None: halving from 64, floor 16.
    """

    kind = "gan"

    def __init__(
        self,
        input_shape: Sequence[int],
        latent_dim: int | None = None,
        widths: list[int] | None = None,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {input_shape}")
        c, h, w = (int(v) for v in input_shape)
        super().__init__((c, h, w))
        self.latent_dim = max(1, math.prod(self.input_shape) // 16) if latent_dim is None else int(latent_dim)
        n_up, bh, bw = gan_geometry(h, w)
        if widths is None:
            widths = [max(16, 64 >> i) for i in range(max(n_up, 1))]
        self.widths = [int(v) for v in widths]
        if len(self.widths) != max(n_up, 1):
            raise ConfigError(f"widths needs {max(n_up, 1)} entries for a {h}x{w} input, got {self.widths}")
        self.n_up = n_up
        self.train_metrics: dict[str, float] = {}

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(self.latent_dim, self.widths[0], (bh, bw), 1, 0, bias=False),
            nn.BatchNorm2d(self.widths[0]),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for i in range(1, n_up):
            layers += [
                nn.ConvTranspose2d(self.widths[i - 1], self.widths[i], 4, 2, 1, bias=False),
                nn.BatchNorm2d(self.widths[i]),
                nn.ReLU(inplace=True),
            ]
        if n_up >= 1:
            layers.append(nn.ConvTranspose2d(self.widths[-1], c, 4, 2, 1, bias=False))
        else:  # tiny inputs: the base map is the output
            layers.append(nn.Conv2d(self.widths[-1], c, 1, bias=False))
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN initialisation
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def config(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "latent_dim": self.latent_dim, "widths": list(self.widths)}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(z.view(z.shape[0], self.latent_dim, 1, 1))
        if tuple(y.shape[-2:]) != self.input_shape[1:]:
            y = F.interpolate(y, size=self.input_shape[1:], mode="bilinear", align_corners=False)
        return y

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            return self(torch.randn((n, self.latent_dim), generator=generator, device=self.device))
        finally:
            self.train(was_training)


class Critic(nn.Module):
    """WGAN critic: strided 4x4 convs (LeakyReLU 0.2) down to <= 4x4, then one conv over the map to a score."""

    def __init__(self, input_shape: tuple[int, ...], base_width: int = 16, max_width: int = 128) -> None:
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        width, c_in = base_width, c
        while min(h, w) > 4:
            layers += [nn.Conv2d(c_in, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
            h, w = h // 2, w // 2
            c_in, width = width, min(max_width, width * 2)
        layers.append(nn.Conv2d(c_in, 1, (h, w), bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def fit_gan(
    grads: torch.Tensor,
    *,
    latent_dim: int | None = None,
    widths: list[int] | None = None,
    epochs: int = 15,
    lr: float = 5e-5,
    batch_size: int = 64,
    clip: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "auto",
    verbose: bool = False,
) -> GAN:
    """Train a :class:`GAN` on input gradients with WGAN (weight clipping), RMSprop(lr) for both nets.

    ``grads`` (N, C, H, W) are normalised to unit L2 per sample. Each batch: one critic step on
    ``mean D(fake) - mean D(real)`` followed by clipping the critic's weights to +-``clip``, then one generator
    step on ``-mean D(G(z))``. Initial weights, shuffling and z all come from ``seed`` (deterministic on CPU).
    Returns the generator in eval mode with ``train_metrics``: the last epoch's mean critic loss, generator loss
    and Wasserstein estimate (mean D(real) - D(fake)), seconds, epochs, steps.
    """
    dev = resolve_device(device)
    x = unit_l2(as_gradient_tensor(grads))
    n = x.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = GAN(tuple(x.shape[1:]), latent_dim=latent_dim, widths=widths)
        critic = Critic(prior.input_shape)
    prior.to(dev).train()
    critic.to(dev).train()
    opt_g = torch.optim.RMSprop(prior.parameters(), lr=lr)
    opt_d = torch.optim.RMSprop(critic.parameters(), lr=lr)
    gen_cpu = torch.Generator().manual_seed(seed)
    gen_dev = torch.Generator(device=dev).manual_seed(seed + 1)
    start = time.perf_counter()
    steps = 0
    sums = {"d_loss": 0.0, "g_loss": 0.0, "wasserstein": 0.0}
    bar = tqdm(range(epochs), desc="fit gan", unit="epoch", disable=not verbose, leave=verbose)
    for _ in bar:
        sums = dict.fromkeys(sums, 0.0)
        count = 0
        perm = torch.randperm(n, generator=gen_cpu)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if idx.numel() < 2:
                continue
            real = x[idx].to(dev)
            z = torch.randn((idx.numel(), prior.latent_dim), generator=gen_dev, device=dev)
            with torch.no_grad():
                fake = prior(z)
            d_real, d_fake = critic(real).mean(), critic(fake).mean()
            d_loss = d_fake - d_real
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            with torch.no_grad():
                for p in critic.parameters():
                    p.clamp_(-clip, clip)
            z = torch.randn((idx.numel(), prior.latent_dim), generator=gen_dev, device=dev)
            g_loss = -critic(prior(z)).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            steps += 1
            count += 1
            sums["d_loss"] += d_loss.item()
            sums["g_loss"] += g_loss.item()
            sums["wasserstein"] += (d_real - d_fake).item()
        sums = {k: v / max(count, 1) for k, v in sums.items()}
        bar.set_postfix(w=f"{sums['wasserstein']:.3g}")
    prior.eval()
    prior.train_metrics = {
        **sums,
        "seconds": time.perf_counter() - start,
        "epochs": epochs,
        "steps": steps,
        "n_train": n,
    }
    return prior
