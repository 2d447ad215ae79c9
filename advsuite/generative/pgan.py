"""A progressive GAN, after PSBA's probe prior: a generator with one output per spatial scale.

Paper: J. Zhang*, L. Li*, H. Li, X. Zhang, S. Yang, B. Li, "Progressive-Scale Boundary Blackbox Attack via
Projective Gradient Estimation", ICML 2021 (code: AI-secure/PSBA, ``src/models/pgan_generator.py``,
``src/train_pgan_generator.py``, after facebookresearch/pytorch_GAN_zoo). Written from the design notes, not
from the authors' code.

Generator: pixel-norm on z; linear z -> ``depths[0] x b_h x b_w`` -> LeakyReLU(0.2) -> pixel-norm -> conv3x3 ->
LeakyReLU -> pixel-norm (scale 1); each further scale: nearest up-sampling to the next size -> 2 x (conv3x3 ->
LeakyReLU(0.2) -> pixel-norm); a 1x1 toRGB per scale; tanh on the output. Sizes double from the base
``b = ceil(side / 2^(n_scales - 1))`` in [4, 8) and the last scale is the input size: 7 -> 14 -> 28 for MNIST,
4 -> 8 -> 16 -> 32 for CIFAR-10, 7 -> 14 -> ... -> 224 (6 scales, the authors' numbering) for ImageNet; for
sides that do not divide (e.g. 29: 8 -> 16 -> 29) the last growth is by the remaining factor.
:meth:`ProgressiveGAN.sample_at` gives the output at any scale (no fade-in), :meth:`ProgressiveGAN.sample` the full one.

Training (:func:`fit_pgan`): WGAN-GP (lambda 10, drift 0.001), Adam lr 2e-4 betas (0, 0.99) for both nets,
stage by stage; from stage 2 on the new scale fades in (alpha 0 -> 1 linearly over the first half of the
stage) in the generator and in a discriminator that grows with it (fromRGB 1x1 per scale, 2 x conv3x3 +
average-pool per scale, mini-batch std-dev + conv3x3 + 2 linear layers at the base). Real data: gradients
divided by their max |value| per sample (range [-1, 1], as tanh), average-pooled to the current scale.
Equalized learning rate (weights N(0, 1) scaled at run time by He's constant, as the authors' layers) is on by
default (``equalized_lr``).

Where the defaults differ from the authors' (CPU-sized; the authors train 224x224 on a GPU):

* no separate 4x4 first stage: the authors start at 4x4 and grow 4 -> 7; we start at the base size, so the
  scales the attack uses (and their numbering at 224) are the same with one stage fewer;
* depths: authors 512 at the base, then 256, 256, 128, 64, 32, 16; ours ``[32, 32, 16, 16, ...]``
  (28x28: [32, 32, 16]; 32x32: [32, 32, 16, 16]); the discriminator uses the same depths;
* ``latent_dim`` None -> d / 16 (the authors' 9408 at 224x224x3; 49 for MNIST);
* 2,000 steps per scale (the prior spec's ``epochs_per_scale: 8`` on 4,000 gradients) instead of 50 epochs on
  ~240k, batch 16 and lr 1e-3 instead of 2e-4: WGAN-GP needs a few hundred steps per scale before the
  generator follows the data (measured: on a 7x7 two-mode toy set lr 2e-4 had learned nothing after 310
  steps, lr 1e-3 had), and a small batch buys more steps per CPU second. On a synthetic 2,000 x 3 x 32 x 32
  two-pattern set, 2,000 steps per scale bring the probes' mean |cos| with the nearest pattern
  to 0.66 / 0.81 / 0.81 / 0.84 at 4 / 8 / 16 / 32 px (0.16-0.22 with the former 31 steps at lr 2e-4). Pass
  ``lr=2e-4`` for the authors' value.

Probes below the full scale come from the generator as it stood at the end of that scale's stage (the
authors grow the generator only up to the scale the attack uses). Drawing them from the final generator's
per-scale output layer instead, which stopped training after its stage while the shared layers kept
training, costs alignment: on the set above 0.55 / 0.47 instead of 0.81 / 0.81 at 8 / 16 px.

Known limitation: at this budget the result varies with the data; check the probes' spread
(``task=prior`` prints it) before trusting a trained prior, or train longer (``epochs_per_scale``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advsuite.device import resolve_device
from advsuite.errors import ConfigError

from .autoencoder import as_gradient_tensor
from .base import GenerativeModel
from .gan import gan_geometry


def pgan_scale_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Output size of every scale, smallest first; the last is (height, width)."""
    n_up, bh, bw = gan_geometry(height, width)
    sizes = [(bh * 2**i, bw * 2**i) for i in range(n_up)]
    return [*sizes, (height, width)]


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each feature vector (over dim 1) divided by its root mean square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class EqConv2d(nn.Conv2d):
    """Conv2d with an equalized learning rate: weights N(0, 1), multiplied by sqrt(2 / fan_in) in forward."""

    def __init__(self, c_in: int, c_out: int, kernel: int, equalized: bool = True) -> None:
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        self.scale = math.sqrt(2.0 / (c_in * kernel * kernel)) if equalized else 1.0
        if equalized:
            nn.init.normal_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.scale, self.bias)


class EqLinear(nn.Linear):
    """Linear layer with an equalized learning rate (see :class:`EqConv2d`)."""

    def __init__(self, c_in: int, c_out: int, equalized: bool = True) -> None:
        super().__init__(c_in, c_out)
        self.scale = math.sqrt(2.0 / c_in) if equalized else 1.0
        if equalized:
            nn.init.normal_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x)


def _g_block(c_in: int, c_out: int, eq: bool) -> nn.Sequential:
    """Generator block of one scale: 2 x (conv3x3 -> LeakyReLU(0.2) -> pixel-norm)."""
    return nn.Sequential(
        EqConv2d(c_in, c_out, 3, eq),
        nn.LeakyReLU(0.2),
        PixelNorm(),
        EqConv2d(c_out, c_out, 3, eq),
        nn.LeakyReLU(0.2),
        PixelNorm(),
    )


def _d_block(c_in: int, c_out: int, eq: bool) -> nn.Sequential:
    """Discriminator block of one scale (before pooling): 2 x (conv3x3 -> LeakyReLU(0.2))."""
    return nn.Sequential(
        EqConv2d(c_in, c_in, 3, eq), nn.LeakyReLU(0.2), EqConv2d(c_in, c_out, 3, eq), nn.LeakyReLU(0.2)
    )


def _grow(
    z: torch.Tensor,
    format_: nn.Module,
    conv0: nn.Module,
    blocks: Iterable[nn.Module],
    sizes: Sequence[tuple[int, int]],
    depth0: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features at scale ``len(blocks) + 1`` and at the scale before it (the same at scale 1)."""
    bh, bw = sizes[0]
    h = format_(pixel_norm(z)).view(z.shape[0], depth0, bh, bw)
    h = pixel_norm(_lrelu(conv0(pixel_norm(_lrelu(h)))))
    prev = h
    for i, block in enumerate(blocks, start=1):
        prev = h
        h = block(F.interpolate(h, size=sizes[i], mode="nearest"))
    return h, prev


class Stage(nn.Module):
    """The generator as it stood at the end of one training stage: its layers up to that scale and that
    scale's output layer. Later stages keep training the shared layers, so only this copy still matches
    the output layer; the authors get the same network by growing the generator only up to the scale."""

    def __init__(self, gan: ProgressiveGAN, scale: int) -> None:
        super().__init__()
        self.sizes, self.depth0 = gan.scale_sizes[:scale], gan.depths[0]
        self.format = copy.deepcopy(gan.format)
        self.conv0 = copy.deepcopy(gan.conv0)
        self.blocks = nn.ModuleList([copy.deepcopy(b) for b in gan.blocks[: scale - 1]])
        self.to_rgb = copy.deepcopy(gan.to_rgb[scale - 1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, _ = _grow(z, self.format, self.conv0, self.blocks, self.sizes, self.depth0)
        return torch.tanh(self.to_rgb(h))


class ProgressiveGAN(GenerativeModel):
    """PSBA's progressive GAN prior (``PSBA-PGAN``): probes G_s(z), z ~ N(0, I_latent_dim), at scale s.

    Args:
        input_shape: (C, H, W).
        latent_dim: size of z; None: d / 16 (at least 1).
        depths: channels per scale (``n_scales`` entries, see :func:`pgan_scale_sizes`); None:
            ``[32, 32, 16, 16, ...]``.
        equalized_lr: equalized-learning-rate layers (the authors'); False: ordinary PyTorch layers.
        stages: how many :class:`Stage` copies it holds (scales 1..stages as trained; :func:`fit_pgan` keeps
            one per scale below the full one); a scale without a copy is drawn from the live layers.
    """

    kind = "pgan"

    def __init__(
        self,
        input_shape: Sequence[int],
        latent_dim: int | None = None,
        depths: list[int] | None = None,
        equalized_lr: bool = True,
        stages: int = 0,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {input_shape}")
        c, h, w = (int(v) for v in input_shape)
        super().__init__((c, h, w))
        self._sizes = pgan_scale_sizes(h, w)
        n = len(self._sizes)
        self.latent_dim = max(1, math.prod(self.input_shape) // 16) if latent_dim is None else int(latent_dim)
        self.depths = [int(v) for v in (depths or [32 if i < 2 else 16 for i in range(n)])]
        if len(self.depths) != n:
            raise ConfigError(f"depths needs {n} entries (scales {self._sizes}), got {self.depths}")
        self.equalized_lr = bool(equalized_lr)
        self.train_metrics: dict[str, float] = {}
        eq, d = self.equalized_lr, self.depths
        bh, bw = self._sizes[0]
        self.format = EqLinear(self.latent_dim, d[0] * bh * bw, eq)
        self.conv0 = EqConv2d(d[0], d[0], 3, eq)
        self.blocks = nn.ModuleList([_g_block(d[i - 1], d[i], eq) for i in range(1, n)])
        self.to_rgb = nn.ModuleList([EqConv2d(d[i], c, 1, eq) for i in range(n)])
        if not 0 <= int(stages) < n:
            raise ConfigError(f"stages must be in 0..{n - 1} (one per scale below the full one), got {stages}")
        self.stages = nn.ModuleList([Stage(self, s) for s in range(1, int(stages) + 1)])

    def freeze_stage(self, scale: int) -> None:
        """Keep a copy of the generator as it stands now, for drawing probes at ``scale`` (the stage just trained)."""
        if scale != len(self.stages) + 1 or scale >= self.n_scales:
            raise ConfigError(f"stage {scale} cannot be kept after {len(self.stages)} of {self.n_scales}")
        self.stages.append(Stage(self, scale))

    @property
    def n_scales(self) -> int:
        return len(self._sizes)

    @property
    def scale_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of every scale, index 0 = scale 1 (smallest); the last is the input size."""
        return list(self._sizes)

    def config(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "latent_dim": self.latent_dim,
            "depths": list(self.depths),
            "equalized_lr": self.equalized_lr,
            "stages": len(self.stages),
        }

    def forward(self, z: torch.Tensor, scale: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Output at ``scale`` (1-based; None = full), blending in the previous scale with weight 1 - alpha."""
        s = self.n_scales if scale is None else int(scale)
        if not 1 <= s <= self.n_scales:
            raise ConfigError(f"scale must be in 1..{self.n_scales}, got {scale}")
        h, prev = _grow(z, self.format, self.conv0, self.blocks[: s - 1], self._sizes, self.depths[0])
        out = self.to_rgb[s - 1](h)
        if s > 1 and alpha < 1.0:
            old = F.interpolate(self.to_rgb[s - 2](prev), size=self._sizes[s - 1], mode="nearest")
            out = alpha * out + (1.0 - alpha) * old
        return torch.tanh(out)

    @torch.no_grad()
    def sample_at(self, n: int, generator: torch.Generator, scale: int) -> torch.Tensor:
        """``n`` probes (n, C, h_s, w_s) at ``scale`` (1 = smallest, ``n_scales`` = full resolution), from the
        generator as it stood at the end of that scale's stage."""
        z = torch.randn((n, self.latent_dim), generator=generator, device=self.device)
        if 1 <= scale <= len(self.stages):
            return self.stages[scale - 1](z)
        return self(z, scale)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.sample_at(n, generator, self.n_scales)


class PDiscriminator(nn.Module):
    """The discriminator that grows with :class:`ProgressiveGAN` (training only; not part of the prior's state)."""

    def __init__(self, prior: ProgressiveGAN) -> None:
        super().__init__()
        c = prior.input_shape[0]
        d, eq, self.sizes = prior.depths, prior.equalized_lr, prior.scale_sizes
        n = len(d)
        self.from_rgb = nn.ModuleList([EqConv2d(c, d[i], 1, eq) for i in range(n)])
        self.blocks = nn.ModuleList([_d_block(d[i], d[i - 1], eq) for i in range(1, n)])
        bh, bw = self.sizes[0]
        self.conv0 = EqConv2d(d[0] + 1, d[0], 3, eq)
        self.fc = EqLinear(d[0] * bh * bw, d[0], eq)
        self.out = EqLinear(d[0], 1, eq)

    def _block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Scale ``i + 1`` (0-based index ``i`` >= 1) down to scale ``i``."""
        return F.adaptive_avg_pool2d(self.blocks[i - 1](h), self.sizes[i - 1])

    def forward(self, x: torch.Tensor, scale: int, alpha: float = 1.0) -> torch.Tensor:
        h = _lrelu(self.from_rgb[scale - 1](x))
        if scale > 1:
            h = self._block(scale - 1, h)
            if alpha < 1.0:
                old = _lrelu(self.from_rgb[scale - 2](F.adaptive_avg_pool2d(x, self.sizes[scale - 2])))
                h = alpha * h + (1.0 - alpha) * old
            for i in range(scale - 2, 0, -1):
                h = self._block(i, h)
        std = (h.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()  # mini-batch std-dev feature
        h = torch.cat([h, std.expand(h.shape[0], 1, *h.shape[2:])], dim=1)
        h = _lrelu(self.conv0(h))
        return self.out(_lrelu(self.fc(h.flatten(1)))).flatten()


def fit_pgan(
    grads: torch.Tensor,
    *,
    latent_dim: int | None = None,
    depths: list[int] | None = None,
    equalized_lr: bool = True,
    epochs_per_scale: float = 1.0,
    lr: float = 1e-3,
    batch_size: int = 16,
    gp_lambda: float = 10.0,
    drift: float = 1e-3,
    scales: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    verbose: bool = False,
) -> ProgressiveGAN:
    """Train a :class:`ProgressiveGAN` on input gradients, scale by scale, with WGAN-GP.

    ``grads`` (N, C, H, W) are divided by their max |value| per sample and average-pooled to each scale.
    Stage s trains scales 1..s for ``epochs_per_scale`` epochs (may be fractional; at least one step), the new
    scale fading in over the first half of the stage (s >= 2). Per batch: one discriminator step on
    ``D(fake) - D(real) + gp_lambda * (|grad D(interp)| - 1)^2 + drift * D(real)^2``, then one generator step
    on ``-D(G(z))``; Adam(lr, betas (0, 0.99)) for both. After each stage below the full scale the generator
    is kept as it stands (:meth:`ProgressiveGAN.freeze_stage`): probes at that scale come from that copy, the
    network grown only to it, as in the authors' code. ``scales`` stops after that many stages (None: all).
    Everything random comes from ``seed``
    (deterministic on CPU). Returns the generator in eval mode with ``train_metrics``: the last stage's mean
    discriminator/generator loss and Wasserstein estimate, seconds, steps.
    """
    dev = resolve_device(device)
    x = as_gradient_tensor(grads)
    x = x / x.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    n = x.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = ProgressiveGAN(tuple(x.shape[1:]), latent_dim=latent_dim, depths=depths, equalized_lr=equalized_lr)
        disc = PDiscriminator(prior)
    prior.to(dev).train()
    disc.to(dev).train()
    opt_g = torch.optim.Adam(prior.parameters(), lr=lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.0, 0.99))
    gen_cpu = torch.Generator().manual_seed(seed)
    gen_dev = torch.Generator(device=dev).manual_seed(seed + 1)
    bs = max(2, min(batch_size, n))
    steps_per_stage = max(1, round(epochs_per_scale * (n // bs)))
    start = time.perf_counter()
    total_steps = 0
    sums: dict[str, float] = {}
    last = prior.n_scales if scales is None else int(scales)
    if not 1 <= last <= prior.n_scales:
        raise ConfigError(f"scales must be in 1..{prior.n_scales}, got {scales}")
    bar = tqdm(total=steps_per_stage * last, desc="fit pgan", disable=not verbose, leave=verbose)
    for scale in range(1, last + 1):
        size = prior.scale_sizes[scale - 1]
        real_all = x if size == tuple(x.shape[-2:]) else F.adaptive_avg_pool2d(x, size)
        sums = {"d_loss": 0.0, "g_loss": 0.0, "wasserstein": 0.0}
        perm = torch.randperm(n, generator=gen_cpu)
        pos = 0
        for step in range(steps_per_stage):
            alpha = 1.0 if scale == 1 else min(1.0, step / max(1.0, steps_per_stage / 2))
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen_cpu), 0
            real = real_all[perm[pos : pos + bs]].to(dev)
            pos += bs
            z = torch.randn((bs, prior.latent_dim), generator=gen_dev, device=dev)
            with torch.no_grad():
                fake = prior(z, scale, alpha)
            d_real, d_fake = disc(real, scale, alpha), disc(fake, scale, alpha)
            eps = torch.rand((bs, 1, 1, 1), generator=gen_dev, device=dev)
            interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(disc(interp, scale, alpha).sum(), interp, create_graph=True)
            gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
            d_loss = d_fake.mean() - d_real.mean() + gp_lambda * gp + drift * d_real.pow(2).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            z = torch.randn((bs, prior.latent_dim), generator=gen_dev, device=dev)
            g_loss = -disc(prior(z, scale, alpha), scale, alpha).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            total_steps += 1
            sums["d_loss"] += d_loss.item()
            sums["g_loss"] += g_loss.item()
            sums["wasserstein"] += (d_real.detach().mean() - d_fake.detach().mean()).item()
            bar.update(1)
            bar.set_postfix(scale=scale, alpha=f"{alpha:.2f}")
        sums = {k: v / steps_per_stage for k, v in sums.items()}
        if scale < prior.n_scales:
            prior.freeze_stage(scale)  # the network grown only to this scale, as the attack must see it
    bar.close()
    prior.eval()
    prior.train_metrics = {
        **sums,
        "seconds": time.perf_counter() - start,
        "steps": total_steps,
        "steps_per_scale": steps_per_stage,
        "n_train": n,
    }
    return prior
