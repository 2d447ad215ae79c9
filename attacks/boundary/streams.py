"""One random stream per image, so an image is attacked the same way alone or inside any batch."""

from __future__ import annotations

import hashlib

import torch


def image_seed(seed: int, image: torch.Tensor) -> int:
    """A 63-bit seed from the attack's seed and the image's exact bytes (not its position in a batch)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def image_generators(seed: int, images: torch.Tensor) -> list[torch.Generator]:
    """A seeded ``torch.Generator`` on the images' device for each image."""
    gens = []
    for image in images:
        gen = torch.Generator(device=images.device)
        gen.manual_seed(image_seed(seed, image))
        gens.append(gen)
    return gens
