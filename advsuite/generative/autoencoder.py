"""An autoencoder and a VAE, after NonLinear-BA's AE and VAE: decoders that NonLinear-BA trains on reference-model
input gradients (its probe priors) and the transfer patch attack on image crops.

Paper: H. Li, L. Li, X. Xu, X. Zhang, S. Yang, B. Li, "Nonlinear Projection Based Gradient Estimation for
Query Efficient Blackbox Attacks", AISTATS 2021 (code: AI-secure/NonLinear-BA, ``src/models/ae_generator.py``,
``vae_generator.py``). Written from the design notes, not from the authors' code.

Architecture (U-Net-style blocks without skips, as the authors'):

* encoder: ``double_conv`` = (Conv3x3 -> BN -> ReLU) x 2 at full resolution, then ``n_down`` blocks of
  [MaxPool2 -> double_conv]; the last block's output is the latent, ``latent_channels x H/2^k x W/2^k``,
  normalised to unit L2 per sample. The VAE has two such last blocks (mu and log sigma^2 heads);
  z = mu + sigma * eps, normalised.
* decoder: ``n_down`` blocks of [bilinear up-sample x2 (``align_corners=True``) -> double_conv], a 1x1 conv to C,
  a bilinear resize to (H, W) when the size does not divide by 2^k (e.g. 30 -> 15 -> 7 -> 28 -> 30), and
  normalisation of the output to unit L2.
* probes (:meth:`AutoEncoder.sample`): z ~ N(0, I) in the latent shape, normalised to the unit sphere, decoded.
  As in the authors' design the training latents are outputs of a ReLU block (non-negative; for the VAE this also
  makes log sigma^2 >= 0) while sampling draws from the whole sphere; that is the default. ``latent_relu=False``
  drops that last ReLU (a linear latent): on a synthetic low-frequency set (4,000 x 1 x 28 x 28) the AE's probes
  were then far more diverse (mean |cos| between probes 0.22 instead of 0.70) at the same reconstruction quality.

Training (:func:`fit_autoencoder`): Adam, loss = MSE (mean over elements) between the unit-normalised
reconstruction and the unit-normalised gradient; the VAE adds ``kl_weight`` x KL (KL summed over the latent,
averaged over the batch, as the authors).

Where the defaults differ from the authors' (all to make training on ~4,000 28x28 gradients take about a
minute on 2 CPU cores; the authors train 224x224 models on a GPU on ~500k gradients):

* ``n_down``: the authors use 4 down-samplings at 224 (latent 48 x 14 x 14 = d/16); we choose the number
  from the input size, ``floor(log2(min(H, W) / 7))`` clipped to [1, 4]: 2 for 28x28 and 32x32, 4 for 224.
* ``latent_channels``: default ``C * 4^k / 16`` (at least 1), which keeps the authors' latent size d/16
  (48 at 224x224x3 with k = 4; 1 x 7 x 7 = 49 for MNIST, 3 x 8 x 8 = 192 for CIFAR-10).
* ``widths``: the authors' encoder widths are [24, 24, 48, 48] (k = 4); ours follow the same pattern
  (x, ..., 2x, ...) with x = 8: [8, 16] for k = 2.
* epochs 10 instead of 100, and the VAE's lr 1e-3 instead of 1e-4 (AE: 1e-3 as the authors), batch 64.
* ``kl_weight``: the authors' ``lam = 1e-11`` was set for d = 224*224*3 = 150528. Their reconstruction MSE is a
  mean over d elements (~1/d) and their KL a sum over d/16 latents (~d), so the same balance needs
  lam proportional to 1/d^2; the default is ``1e-11 * (150528 / d)^2`` (exactly 1e-11 at 224x224x3, 3.7e-7 for
  MNIST). Pass ``kl_weight=1e-11`` to use the authors' number unchanged.
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
from advsuite.errors import ConfigError, InputError

from .base import GenerativeModel

AUTHORS_D = 224 * 224 * 3
AUTHORS_LAM = 1e-11


def unit_l2(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each sample of ``x`` (n, ...) divided by its L2 norm."""
    norms = x.flatten(1).norm(dim=1).clamp_min(eps)
    return x / norms.view(-1, *([1] * (x.dim() - 1)))


def as_gradient_tensor(grads: Any) -> torch.Tensor:
    """``grads`` as a float32 (N, C, H, W) CPU tensor; raises :class:`InputError` otherwise."""
    x = torch.as_tensor(grads).detach().to("cpu", torch.float32)
    if x.dim() != 4 or x.shape[0] < 2:
        raise InputError(f"gradients must be (N, C, H, W) with N >= 2, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("gradients contain NaN or inf")
    return x


def default_n_down(height: int, width: int) -> int:
    """Number of 2x down-samplings: 2 for 28/32-pixel inputs, 4 (the authors') for 224."""
    side, k = min(height, width), 1
    while k < 4 and side >= 7 * 2 ** (k + 1):
        k += 1
    return k


def _double_conv(c_in: int, c_out: int, final_relu: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True) if final_relu else nn.Identity(),
    )


def _down(c_in: int, c_out: int, final_relu: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.MaxPool2d(2), _double_conv(c_in, c_out, final_relu))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), _double_conv(c_in, c_out))


class AutoEncoder(GenerativeModel):
    """NonLinear-BA's autoencoder prior (``NLBA-AE``); the decoder is the probe generator.

    Args:
        input_shape: (C, H, W).
        latent_channels: channels of the latent map; None: ``C * 4^n_down / 16`` (latent size d/16).
        n_down: number of 2x down-samplings; None: :func:`default_n_down`.
        widths: encoder widths (inc, then the first ``n_down - 1`` down blocks); the decoder mirrors them.
            None: ``[8] * (n_down // 2) + [16] * (n_down - n_down // 2)`` (authors: [24, 24, 48, 48]).
        latent_relu: keep the ReLU that ends the latent block(s), as the authors (the latent is then
            non-negative in training while probes are decoded from the whole sphere); False: a linear latent.
    """

    kind = "ae"

    def __init__(
        self,
        input_shape: Sequence[int],
        latent_channels: int | None = None,
        n_down: int | None = None,
        widths: list[int] | None = None,
        latent_relu: bool = True,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {input_shape}")
        c, h, w = (int(v) for v in input_shape)
        super().__init__((c, h, w))
        k = default_n_down(h, w) if n_down is None else int(n_down)
        if k < 1 or (h >> k) < 1 or (w >> k) < 1:
            raise ConfigError(f"n_down={k} does not fit a {h}x{w} input (need 1 <= n_down <= log2(min(H, W)))")
        self.n_down = k
        self.latent_relu = bool(latent_relu)
        self.latent_channels = max(1, round(c * 4**k / 16)) if latent_channels is None else int(latent_channels)
        if widths is None:
            widths = [8] * (k // 2) + [16] * (k - k // 2)
        self.widths = [int(v) for v in widths]
        if len(self.widths) != k:
            raise ConfigError(f"widths needs n_down={k} entries, got {self.widths}")
        self.latent_shape = (self.latent_channels, h >> k, w >> k)
        self.train_metrics: dict[str, float] = {}

        self.inc = _double_conv(c, self.widths[0])
        self.downs = nn.Sequential(*[_down(self.widths[i - 1], self.widths[i]) for i in range(1, k)])
        self._build_heads()
        rev = self.widths[::-1]
        ups = [_up(self.latent_channels, rev[0])] + [_up(rev[i - 1], rev[i]) for i in range(1, k)]
        self.ups = nn.Sequential(*ups)
        self.outc = nn.Conv2d(rev[-1], c, 1)

    def _build_heads(self) -> None:
        self.to_latent = _down(self.widths[-1], self.latent_channels, self.latent_relu)

    def config(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "latent_channels": self.latent_channels,
            "n_down": self.n_down,
            "widths": list(self.widths),
            "latent_relu": self.latent_relu,
        }

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.downs(self.inc(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-L2 latent of unit-normalised ``x``."""
        return unit_l2(self.to_latent(self._trunk(unit_l2(x))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unit-L2 output (n, C, H, W) of latents ``z`` (n, *latent_shape)."""
        y = self.outc(self.ups(z))
        if tuple(y.shape[-2:]) != self.input_shape[1:]:
            y = F.interpolate(y, size=self.input_shape[1:], mode="bilinear", align_corners=False)
        return unit_l2(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Unit-L2 reconstructions of ``x`` in eval mode (deterministic, also for the VAE: z = mu)."""
        was_training = self.training
        self.eval()
        try:
            out = [self(x[i : i + batch_size].to(self.device)) for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            z = torch.randn((n, *self.latent_shape), generator=generator, device=self.device)
            return self.decode(unit_l2(z))
        finally:
            self.train(was_training)


class VAE(AutoEncoder):
    """NonLinear-BA's variational autoencoder prior (``NLBA-VAE``): mu and log sigma^2 heads.

    Same arguments as :class:`AutoEncoder`. In training z = mu + sigma * eps (normalised); in :meth:`reconstruct`
    z = mu (normalised); probes are decoded from the unit sphere as for the AE.
    """

    kind = "vae"

    def _build_heads(self) -> None:
        self.to_mu = _down(self.widths[-1], self.latent_channels, self.latent_relu)
        self.to_logvar = _down(self.widths[-1], self.latent_channels, self.latent_relu)

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of unit-normalised ``x``."""
        h = self._trunk(unit_l2(x))
        return self.to_mu(h), self.to_logvar(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return unit_l2(self.encode_stats(x)[0])

    def forward_train(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit reconstruction, KL per sample) with z = mu + sigma * eps."""
        mu, logvar = self.encode_stats(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)
        return self.decode(unit_l2(z)), kl


def default_kl_weight(input_shape: tuple[int, ...]) -> float:
    """The authors' lam = 1e-11 at d = 150528, scaled by (150528 / d)^2 (see the module docstring)."""
    d = math.prod(input_shape)
    return AUTHORS_LAM * (AUTHORS_D / d) ** 2


def _recon_metrics(prior: AutoEncoder, x: torch.Tensor) -> tuple[float, float]:
    """(MSE of unit vectors, mean cosine) of ``prior``'s reconstructions of ``x`` (already unit-norm)."""
    rec = prior.reconstruct(x).cpu()
    return F.mse_loss(rec, x).item(), (rec * x).flatten(1).sum(dim=1).mean().item()


def fit_autoencoder(
    grads: torch.Tensor,
    *,
    variational: bool = False,
    latent_channels: int | None = None,
    n_down: int | None = None,
    widths: list[int] | None = None,
    latent_relu: bool = True,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    kl_weight: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    verbose: bool = False,
) -> AutoEncoder | VAE:
    """Train an :class:`AutoEncoder` (or :class:`VAE` when ``variational``) on input gradients.

    ``grads`` (N, C, H, W) are normalised to unit L2 per sample. Adam(lr), ``epochs`` passes over shuffled
    batches (a trailing batch of one sample is skipped: batch norm needs two); loss = MSE(unit reconstruction,
    unit gradient) [+ ``kl_weight`` x KL for the VAE; None: :func:`default_kl_weight`]. Initial weights, shuffling
    and the VAE's noise all come from ``seed``; on CPU the result is deterministic. The returned prior is in eval
    mode on ``device`` and has ``train_metrics``: initial/final reconstruction loss and mean cosine on ``grads``
    (eval mode), the last epoch's mean training loss, seconds, epochs, steps.
    """
    dev = resolve_device(device)
    x = unit_l2(as_gradient_tensor(grads))
    n = x.shape[0]
    cls = VAE if variational else AutoEncoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = cls(
            tuple(x.shape[1:]),
            latent_channels=latent_channels,
            n_down=n_down,
            widths=widths,
            latent_relu=latent_relu,
        )
    prior.to(dev)
    lam = default_kl_weight(prior.input_shape) if kl_weight is None else float(kl_weight)
    gen_cpu = torch.Generator().manual_seed(seed)
    gen_dev = torch.Generator(device=dev).manual_seed(seed + 1)
    initial_loss, initial_cos = _recon_metrics(prior, x)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    start = time.perf_counter()
    steps = 0
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc=f"fit {cls.kind}", unit="epoch", disable=not verbose, leave=verbose)
    prior.train()
    for _ in bar:
        total, count = 0.0, 0
        perm = torch.randperm(n, generator=gen_cpu)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if idx.numel() < 2:
                continue
            xb = x[idx].to(dev)
            if isinstance(prior, VAE):
                rec, kl = prior.forward_train(xb, gen_dev)
                loss = F.mse_loss(rec, xb) + lam * kl.mean()
            else:
                loss = F.mse_loss(prior(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item() * idx.numel()
            count += idx.numel()
        epoch_loss = total / max(count, 1)
        bar.set_postfix(loss=f"{epoch_loss:.3g}")
    seconds = time.perf_counter() - start
    prior.eval()
    final_loss, final_cos = _recon_metrics(prior, x)
    prior.train_metrics = {
        "initial_loss": initial_loss,
        "initial_cosine": initial_cos,
        "final_loss": final_loss,
        "mean_cosine": final_cos,
        "last_epoch_train_loss": epoch_loss,
        "kl_weight": lam if variational else 0.0,
        "seconds": seconds,
        "epochs": epochs,
        "steps": steps,
        "n_train": n,
    }
    return prior
