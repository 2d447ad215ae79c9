"""The patch manifold of :class:`~advsuite.attacks.patch.TransferPatch`: a VAE decoder trained on image crops.

Xiao et al. (CVPR 2021) take the patch as G(w) of a face generator (StyleGAN-type) pre-trained on real
faces. We train a small generator on the run's own dataset instead: a VAE on random ``s × s`` crops of
training images (``s`` the patch side), reusing the encoder/decoder of NonLinear-BA's VAE prior
(:class:`advsuite.generative.autoencoder.VAE`) with an image likelihood: inputs mapped to [−1, 1], a
sigmoid output in [0, 1], Bernoulli (binary cross-entropy) reconstruction plus ``kl_weight`` × KL, an
unconstrained (linear) latent. A VAE decoder rather than the suite's WGAN (:mod:`advsuite.generative.gan`):
weight-clipped WGAN training mode-collapsed on 3 × 32 × 32 inputs at this budget, a VAE trains reliably.

Generators are cached like priors, under the zoo cache root::

    <cache_dir>/patch_generators/<dataset>/vae<side>-<key>/generator.safetensors
    <cache_dir>/patch_generators/<dataset>/vae<side>-<key>/meta.json      # written last: the commit marker

``key`` hashes the settings, the patch side, the dataset (name, shape, training-set size) and the seed; the
entry lives in the artifact cache (:mod:`advsuite.artifacts`), so an incomplete or corrupt one is discarded
with a warning and rebuilt.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from advsuite.artifacts import Entry, content_key
from advsuite.configs import to_plain
from advsuite.device import resolve_device
from advsuite.errors import ConfigError, InputError
from advsuite.generative.autoencoder import VAE
from advsuite.seeding import make_generator

WEIGHTS_FILE = "generator.safetensors"

#: generator settings (``generator:`` in conf/attack/patch_gan.yaml) and their defaults
GENERATOR_DEFAULTS: dict[str, Any] = {
    "latent_channels": 2,  # latent = latent_channels x s/2 x s/2: 32 values for a 9x9 patch (81 or 243 pixels)
    "width": 32,
    "epochs": 10,
    "lr": 1e-3,
    "batch_size": 64,
    "kl_weight": 1.0,
    "n_images": 2000,  # crops come from a seeded random subset of n_images training images ...
    "n_crops": 4000,  # ... at seeded random positions
}


class PatchVAE(VAE):
    """A VAE on (C, s, s) image crops; :meth:`decode` is the generator G(w) with outputs in [0, 1]."""

    kind = "patch_vae"

    def __init__(
        self,
        input_shape: Sequence[int],
        latent_channels: int | None = 2,
        n_down: int | None = 1,
        widths: list[int] | None = None,
        latent_relu: bool = False,
    ) -> None:
        super().__init__(input_shape, latent_channels, n_down, widths or [32], latent_relu)

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._trunk(2 * x - 1)
        return self.to_mu(h), self.to_logvar(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of crops ``x`` in [0, 1]."""
        return self.encode_stats(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """G(z): (n, C, s, s) in [0, 1] for latents (n, *latent_shape)."""
        y = self.outc(self.ups(z))
        if tuple(y.shape[-2:]) != self.input_shape[1:]:
            y = F.interpolate(y, size=self.input_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(y)

    def forward_train(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode_stats(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps), kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            return self.decode(torch.randn((n, *self.latent_shape), generator=generator, device=self.device))
        finally:
            self.train(was_training)


def random_crops(x: torch.Tensor, side: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ``side × side`` crops (n, C, side, side) of images ``x`` (seeded by ``gen``, on the CPU)."""
    _, _, height, width = x.shape
    if side > min(height, width):
        raise ConfigError(f"a {side}-pixel crop does not fit {height}x{width} images")
    img = torch.randint(len(x), (n,), generator=gen)
    rows = torch.randint(height - side + 1, (n,), generator=gen)[:, None] + torch.arange(side)
    cols = torch.randint(width - side + 1, (n,), generator=gen)[:, None] + torch.arange(side)
    return x[img[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _elbo_terms(vae: PatchVAE, x: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean BCE per crop of the posterior-mean reconstruction, mean KL per crop), eval mode."""
    was_training = vae.training
    vae.eval()
    bce = kl = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(vae.device)
            mu, logvar = vae.encode_stats(xb)
            rec = vae.decode(mu)
            bce += float(F.binary_cross_entropy(rec, xb, reduction="sum"))
            kl += float((-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum())
    vae.train(was_training)
    return bce / len(x), kl / len(x)


def fit_patch_vae(
    crops: torch.Tensor,
    *,
    latent_channels: int = 2,
    width: int = 32,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    kl_weight: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> PatchVAE:
    """Train a :class:`PatchVAE` on crops (N, C, s, s) in [0, 1] with Adam; deterministic on CPU for a seed.

    Loss per crop: summed BCE of the reconstruction + ``kl_weight`` × KL; a trailing batch of one is skipped
    (batch norm needs two). The result is in eval mode and has ``train_metrics``.
    """
    if crops.dim() != 4 or len(crops) < 2 or crops.shape[-1] != crops.shape[-2]:
        raise InputError(f"crops must be (N >= 2, C, s, s), got {tuple(crops.shape)}")
    if float(crops.min()) < 0 or float(crops.max()) > 1:
        raise InputError("crops must lie in [0, 1]")
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = PatchVAE(tuple(crops.shape[1:]), latent_channels=latent_channels, widths=[width])
    vae.to(dev)
    initial = _elbo_terms(vae, crops)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    order, noise = make_generator(seed), make_generator(seed + 1, dev)
    start, steps = time.perf_counter(), 0
    vae.train()
    for _ in tqdm(range(epochs), desc="fit patch generator", unit="epoch", disable=not verbose, leave=False):
        for batch in torch.randperm(len(crops), generator=order).split(batch_size):
            if len(batch) < 2:
                continue
            xb = crops[batch].to(dev)
            rec, kl = vae.forward_train(xb, noise)
            bce = F.binary_cross_entropy(rec, xb, reduction="none").flatten(1).sum(1)
            loss = (bce + kl_weight * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    vae.eval()
    final = _elbo_terms(vae, crops)
    vae.train_metrics = {
        "initial_bce": initial[0],
        "final_bce": final[0],
        "final_kl": final[1],
        "seconds": time.perf_counter() - start,
        "steps": steps,
        "n_crops": len(crops),
    }
    return vae


# ------------------------------------------------------------------------------------------------ cache


def resolve_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The generator settings with defaults filled in; :class:`ConfigError` for unknown or bad keys."""
    plain = dict(to_plain(settings) or {})
    unknown = sorted(set(plain) - set(GENERATOR_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown generator keys {unknown}; valid keys: {', '.join(GENERATOR_DEFAULTS)}")
    out = {**GENERATOR_DEFAULTS, **plain}
    for key, value in out.items():
        integer = isinstance(GENERATOR_DEFAULTS[key], int)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok or (integer and not isinstance(value, int)):
            kind = "a positive integer" if integer else "a positive number"
            raise ConfigError(f"generator.{key} must be {kind}, got {value!r}")
    return out


def _key(resolved: Mapping[str, Any], side: int, data: Any, seed: int) -> str:
    blob = {
        "settings": dict(resolved),
        "side": side,
        "dataset": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "n_train": len(data.train),
            **({"fingerprint": data.info["fingerprint"]} if "fingerprint" in getattr(data, "info", {}) else {}),
        },
        "seed": int(seed),
    }
    return content_key(blob)


def _rebuild(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> PatchVAE:
    vae = PatchVAE(**meta["config"])
    vae.load_state_dict(state, strict=True)
    vae.info = meta
    return vae


def load_patch_generator(
    data: Any,
    side: int,
    settings: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    verbose: bool = True,
) -> PatchVAE:
    """The cached :class:`PatchVAE` for ``side``-pixel crops of ``data``'s training split, built if missing."""
    resolved = resolve_settings(settings)
    dev = resolve_device(device)
    name = f"vae{side}-{_key(resolved, side, data, seed)}"
    entry = Entry.at(cache_dir, "patch_generators", data.name, name, weights_file=WEIGHTS_FILE, what="patch generator")
    if (cached := entry.load(_rebuild)) is not None:
        cached.info = {**cached.info, "path": str(entry.path), "source": "cache"}
        return cached.to(dev).eval()
    from .base import training_images

    x, _ = training_images(data, resolved["n_images"], seed)
    crops = random_crops(x, side, resolved["n_crops"], make_generator(seed))
    vae = fit_patch_vae(
        crops,
        latent_channels=resolved["latent_channels"],
        width=resolved["width"],
        epochs=resolved["epochs"],
        lr=float(resolved["lr"]),
        batch_size=resolved["batch_size"],
        kl_weight=float(resolved["kl_weight"]),
        seed=seed,
        device=dev,
        verbose=verbose,
    )
    meta = {
        "kind": PatchVAE.kind,
        "config": vae.config(),
        "settings": resolved,
        "side": side,
        "dataset": data.name,
        "seed": int(seed),
        "metrics": vae.train_metrics,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta = entry.store(vae.state_dict(), meta)
    vae.info = {**meta, "path": str(entry.path), "source": "trained"}
    return vae.eval()
