"""Procedural aligned faces: the offline stand-in for face-verification data (``faces=standin``).

No face data ships with advsuite and none can be downloaded offline; CIFAR-10 and MNIST hold no faces, so
no region of theirs is an eye or a nose. This module draws faces instead: each identity is a seeded set of
shape and colour parameters (face outline, skin, hair and hairline, eye spacing, size and iris colour,
eyebrows, nose length and width, mouth width and lip colour); each image of an identity redraws it under
nuisances (shift, scale, brightness, eye opening, mouth height, background, pixel noise). Faces are aligned
like LFW's funneled crops or CelebA's aligned images: the eyes sit on one row, so the facial-region masks
of :mod:`advsuite.attacks.face.regions` cover the same parts of every face.

What it can show: whether an attack's losses, masks, latent optimisation and transfer techniques work
end to end, and how latent and pixel patches compare when embedders must tell identities apart by their
facial parts. What it cannot show: numbers comparable with real face recognition (real identities differ
in texture, age, pose and expression far beyond these parameters, and real embedders are deep networks
trained on millions of faces), nor the paper's StyleGAN manifold.
"""

from __future__ import annotations

import torch

#: identity parameters: name -> (low, high), uniform; positions and sizes are fractions of the image side
IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.28, 0.38),  # half-width of the face ellipse
    "face_h": (0.36, 0.44),  # half-height
    "hairline": (0.20, 0.34),  # row where the hair ends on the forehead
    "eye_dx": (0.12, 0.20),  # half the distance between the eyes
    "eye_r": (0.04, 0.065),  # eye half-width
    "brow_dy": (0.05, 0.09),  # brow height above the eye
    "brow_t": (0.012, 0.03),  # brow thickness
    "nose_len": (0.10, 0.18),
    "nose_w": (0.035, 0.07),
    "mouth_y": (0.70, 0.78),
    "mouth_w": (0.08, 0.16),
}
EYE_ROW = 0.44  # aligned faces: the eyes' row, the same for everyone
CENTRE = (0.5, 0.52)  # (x, y) of the face ellipse


def identity_parameters(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` identities: shape parameters (uniform in :data:`IDENTITY_RANGES`) and colours (RGB in [0, 1])."""
    params = {k: lo + (hi - lo) * torch.rand(n, generator=gen) for k, (lo, hi) in IDENTITY_RANGES.items()}
    tone = torch.rand(n, 1, generator=gen)  # skin from dark to light along one tone axis, then a tint
    skin = torch.tensor([0.36, 0.22, 0.15]) + tone * torch.tensor([0.56, 0.55, 0.50])
    params["skin"] = (skin + 0.06 * (torch.rand(n, 3, generator=gen) - 0.5)).clamp(0, 1)
    params["hair"] = torch.rand(n, 3, generator=gen) * torch.rand(n, 1, generator=gen) * 0.8
    params["iris"] = torch.rand(n, 3, generator=gen) * 0.7
    params["lips"] = params["skin"] * torch.tensor([0.85, 0.45, 0.45]) + 0.1 * torch.rand(n, 3, generator=gen)
    return params


def _ellipse(xx: torch.Tensor, yy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, a: torch.Tensor,
             b: torch.Tensor, px: float) -> torch.Tensor:  # fmt: skip
    """Soft (anti-aliased) mask of ellipses, (n, H, W); centres and half-axes are (n,) fractions."""
    cx, cy, a, b = (t[:, None, None] for t in (cx, cy, a, b))
    r = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2).sqrt()
    return torch.sigmoid((1 - r) * torch.minimum(a, b) * px * 1.5)


def _paint(canvas: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """``canvas`` (n, 3, H, W) with ``colour`` (n, 3) painted through ``mask`` (n, H, W)."""
    m = mask[:, None]
    return canvas * (1 - m) + colour[:, :, None, None] * m


def render_faces(
    params: dict[str, torch.Tensor], identity: torch.Tensor, size: int, gen: torch.Generator
) -> torch.Tensor:
    """One image per entry of ``identity`` (indices into ``params``), (n, 3, size, size) in [0, 1]."""
    n = len(identity)
    p = {k: v[identity] for k, v in params.items()}
    shift = 0.03 * (2 * torch.rand(n, 2, generator=gen) - 1)
    scale = 1 + 0.04 * (2 * torch.rand(n, generator=gen) - 1)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    # image coordinates mapped into the canonical face frame (inverse of shift-and-scale about the centre)
    xx = ((coords[None, None, :] - 0.5 - shift[:, 0, None, None]) / scale[:, None, None]) + 0.5
    yy = ((coords[None, :, None] - 0.5 - shift[:, 1, None, None]) / scale[:, None, None]) + 0.5
    xx, yy = xx.expand(n, size, size), yy.expand(n, size, size)
    px = float(size)

    top = 0.25 + 0.5 * torch.rand(n, 3, generator=gen)
    bottom = 0.25 + 0.5 * torch.rand(n, 3, generator=gen)
    img = top[:, :, None, None] + (bottom - top)[:, :, None, None] * yy[:, None]
    cx, cy = torch.full((n,), CENTRE[0]), torch.full((n,), CENTRE[1])
    img = _paint(img, _ellipse(xx, yy, cx, cy - 0.04, p["face_w"] + 0.05, p["face_h"] + 0.03, px), p["hair"])
    face = _ellipse(xx, yy, cx, cy, p["face_w"], p["face_h"], px)
    img = _paint(img, face, p["skin"])
    fringe = face * torch.sigmoid((p["hairline"][:, None, None] - yy) * px * 1.5)
    img = _paint(img, fringe, p["hair"])
    opening = 0.45 + 0.25 * torch.rand(n, generator=gen)  # eye height / width
    for side in (-1.0, 1.0):
        ex = cx + side * p["eye_dx"]
        ey = torch.full((n,), EYE_ROW)
        img = _paint(img, _ellipse(xx, yy, ex, ey, p["eye_r"], p["eye_r"] * opening, px), torch.full((n, 3), 0.95))
        iris = _ellipse(xx, yy, ex, ey, p["eye_r"] * 0.55, p["eye_r"] * 0.55 * opening.clamp(max=0.6) / 0.6, px)
        img = _paint(img, iris, p["iris"])
        brow = _ellipse(xx, yy, ex, ey - p["brow_dy"], p["eye_r"] * 1.3, p["brow_t"], px)
        img = _paint(img, brow, p["hair"] * 0.6)
    nose = _ellipse(xx, yy, cx, EYE_ROW + p["nose_len"] / 2 + 0.03, p["nose_w"], p["nose_len"] / 2, px)
    img = _paint(img, nose * 0.7, p["skin"] * 0.72)
    mouth_h = 0.015 + 0.02 * torch.rand(n, generator=gen)
    img = _paint(img, _ellipse(xx, yy, cx, p["mouth_y"], p["mouth_w"], mouth_h, px), p["lips"])

    img = img * (0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen))
    img = img + 0.02 * torch.randn(img.shape, generator=gen)
    return img.clamp(0, 1)


def synthetic_faces(
    n_identities: int, per_identity: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``per_identity`` images of each of ``n_identities`` identities: ``(x, identity, params)``, seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    params = identity_parameters(n_identities, gen)
    identity = torch.arange(n_identities).repeat_interleave(per_identity)
    x = torch.cat([render_faces(params, chunk, size, gen) for chunk in identity.split(2048)])
    return x, identity, params
