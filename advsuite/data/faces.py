"""Face-verification data: identities split into training identities and held-out ones (``faces=`` group).

A :class:`FaceData` holds two disjoint sets of identities, as in LFW's protocol: the *training identities*
form a classification :class:`DataBundle` (one class per identity) from which the zoo trains embedders and
the attack's generator learns the face manifold; the *held-out identities* (``x_eval``, ``id_eval``) are
the people attacked and the pairs that fix each embedder's verification threshold. Faces are aligned crops
resized to ``image_size``; the region masks of :mod:`advsuite.attacks.face.regions` assume that alignment.

Loaders: :func:`lfw` (torchvision's ``LFWPeople``), :func:`celeba` (torchvision's ``CelebA``, identity
targets), :func:`identity_folder` (``root/<identity>/<image>``, any image format PIL reads) and
:func:`standin` (procedural faces, :mod:`.synthetic_faces`; needs no files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from advsuite.errors import ConfigError, DatasetNotFoundError

from .bundle import DataBundle
from .npz import channel_stats
from .root import data_root, resolve_under
from .synthetic_faces import synthetic_faces


@dataclass
class FaceData:
    """Training identities (a classification bundle) and held-out identities (images + identity ids)."""

    name: str
    train: DataBundle
    x_eval: torch.Tensor
    id_eval: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def split_identities(
    name: str,
    x: torch.Tensor,
    identity: torch.Tensor,
    *,
    eval_identities: int,
    min_images: int,
    test_fraction: float,
    seed: int,
    info: dict[str, Any] | None = None,
) -> FaceData:
    """Keep identities with at least ``min_images`` images; hold ``eval_identities`` of them out (seeded).

    The training identities are relabelled ``0..K-1``; ``test_fraction`` of each one's images becomes the
    bundle's test split (the embedders' identity-classification accuracy), the rest its train split.
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"faces.test_fraction must be in [0, 1), got {test_fraction!r}")
    if not isinstance(eval_identities, int) or isinstance(eval_identities, bool) or eval_identities < 2:
        raise ConfigError(
            f"faces.eval_identities must be a whole number >= 2 (held-out people), got {eval_identities!r}"
        )
    ids, counts = identity.unique(return_counts=True)
    kept = ids[counts >= min_images]
    if len(kept) < eval_identities + 2:
        raise DatasetNotFoundError(
            f"{name}: only {len(kept)} identities have at least {min_images} images; need "
            f"faces.eval_identities={eval_identities} held out plus at least 2 to train on "
            "(lower faces.min_images or faces.eval_identities)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    kept = kept[torch.randperm(len(kept), generator=gen)]
    held, trained = kept[:eval_identities], kept[eval_identities:].sort().values
    in_eval = torch.isin(identity, held)
    x_eval, id_eval = x[in_eval], identity[in_eval]
    keep = torch.isin(identity, trained)
    x_tr, id_tr = x[keep], torch.searchsorted(trained, identity[keep])
    test = torch.zeros(len(x_tr), dtype=torch.bool)
    for k in range(len(trained)):
        members = (id_tr == k).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=gen)]
        test[members[: min(round(len(members) * test_fraction), len(members) - 1)]] = True
    mean, std = channel_stats(x_tr[~test])
    bundle = DataBundle(
        name=name,
        train=TensorDataset(x_tr[~test], id_tr[~test]),
        test=TensorDataset(x_tr[test], id_tr[test]),
        num_classes=len(trained),
        input_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
        mean=mean,
        std=std,
        # which people and pixels the training split holds: part of every cache key built on it
        info={"identities": len(trained), "task": "face identities", "fingerprint": fingerprint(trained, x_tr)},
    )
    return FaceData(
        name=name,
        train=bundle,
        x_eval=x_eval,
        id_eval=id_eval,
        info={
            **(info or {}),
            "train_identities": len(trained),
            "train_images": int((~test).sum()),
            "eval_identities": len(held),
            "eval_images": len(x_eval),
        },
    )


def fingerprint(identities: torch.Tensor, x: torch.Tensor) -> str:
    """A short hash of the training identities and their images (another split gets other cached models)."""
    digest = hashlib.sha256(identities.numpy().tobytes())
    digest.update(x.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ loaders


def standin(
    name: str = "face_standin",
    n_identities: int = 500,
    per_identity: int = 12,
    image_size: int = 32,
    eval_identities: int = 100,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> FaceData:
    """The offline stand-in: procedural aligned faces (:mod:`.synthetic_faces`), no files needed."""
    x, identity, _ = synthetic_faces(n_identities, per_identity, image_size, seed)
    info = {"source": "procedural faces (advsuite.data.synthetic_faces)", "seed": seed}
    return split_identities(
        name, x, identity, eval_identities=eval_identities, min_images=2, test_fraction=test_fraction,
        seed=seed, info=info,
    )  # fmt: skip


def _transform(image_size: int, crop: float, top: float | None = None) -> Callable[[Any], torch.Tensor]:
    """Crop a square of ``crop`` times the shorter side (the face box of aligned crops), centred, or starting at
    the fraction ``top`` of the height; resize; to tensor."""
    from torchvision import transforms

    if not 0 < crop <= 1:
        raise ConfigError(f"faces.crop is a fraction of the shorter image side in (0, 1], got {crop!r}")

    def apply(img: Any) -> torch.Tensor:
        side = round(min(img.size) * crop)
        if top is None:
            out = transforms.functional.center_crop(img.convert("RGB"), [side, side])
        else:
            left = (img.size[0] - side) // 2
            out = transforms.functional.crop(img.convert("RGB"), round(top * img.size[1]), left, side, side)
        out = transforms.functional.resize(out, [image_size, image_size], antialias=True)
        return transforms.functional.to_tensor(out)

    return apply


def _stack(dataset: Dataset, targets: list[int] | torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    n = len(targets)
    images = [dataset[i][0] for i in tqdm(range(n), desc=f"load {what}", unit="img", leave=False)]
    return torch.stack(images), torch.as_tensor(targets, dtype=torch.long)


def _not_found(name: str, where: Path, exc: Exception, how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{name} could not be loaded from {where} ({exc}); {how}")


def lfw(
    name: str = "lfw",
    root: str | None = None,
    download: bool = False,
    image_set: str = "funneled",
    image_size: int = 32,
    crop: float = 0.5,
    min_images: int = 4,
    eval_identities: int = 100,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> FaceData:
    """LFW through ``torchvision.datasets.LFWPeople`` (all 13,233 images); identities with at least
    ``min_images`` images are kept. ``crop``: the centre fraction of the 250-px image that holds the face.

    torchvision 0.29 no longer downloads LFW itself (``download=True`` raises); place the files it checks under
    ``<root>/lfw-py/``: ``lfw-funneled.tgz`` (or ``lfw.tgz`` / ``lfw-deepfunneled.tgz`` for the other image
    sets), its extracted folder, ``people.txt`` and ``lfw-names.txt``."""
    from torchvision.datasets import LFWPeople

    base = data_root(root)
    how = (
        f"place the LFW files under {base / 'lfw-py'} (the archive of image_set={image_set!r}, its extracted "
        "folder, people.txt, lfw-names.txt; torchvision no longer downloads LFW) or set faces.root / ADVSUITE_DATA"
    )
    try:
        ds = LFWPeople(str(base), split="10fold", image_set=image_set, download=download,
                       transform=_transform(image_size, crop))  # fmt: skip
    except (RuntimeError, ValueError, OSError) as exc:
        raise _not_found("LFW", base, exc, how) from exc
    x, identity = _stack(ds, ds.targets, "LFW")
    info = {"source": f"torchvision LFWPeople ({image_set})", "crop": crop}
    return split_identities(
        name, x, identity, eval_identities=eval_identities, min_images=min_images, test_fraction=test_fraction,
        seed=seed, info=info,
    )  # fmt: skip


def celeba(
    name: str = "celeba",
    root: str | None = None,
    download: bool = False,
    split: str = "all",
    image_size: int = 32,
    crop: float = 0.75,
    top: float | None = 0.24,
    max_identities: int = 2000,
    min_images: int = 10,
    eval_identities: int = 200,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> FaceData:
    """CelebA's aligned images through ``torchvision.datasets.CelebA`` with identity targets; the first
    ``max_identities`` identities with at least ``min_images`` images (CelebA has 10,177; loading all is slow).
    ``crop`` 0.75 of the 178-px width from ``top`` 0.24 of the 218-px height puts the aligned eyes (row ~111) at
    0.44 of the crop, where the region masks expect them."""
    from torchvision.datasets import CelebA

    base = data_root(root)
    try:
        ds = CelebA(str(base), split=split, target_type="identity", download=download,
                    transform=_transform(image_size, crop, top))  # fmt: skip
    except (RuntimeError, ValueError, OSError) as exc:
        how = (
            "set faces.download=true to fetch it (needs the gdown package; Google Drive is often rate-limited), "
            f"or place a copy under {base / 'celeba'}"
        )
        raise _not_found("CelebA", base, exc, how) from exc
    identity = ds.identity.squeeze(1).long()
    ids, counts = identity.unique(return_counts=True)
    chosen = ids[counts >= min_images][:max_identities]
    rows = torch.isin(identity, chosen).nonzero().squeeze(1)
    x = torch.stack([ds[int(i)][0] for i in rows])
    info = {"source": f"torchvision CelebA ({split}, aligned)", "crop": crop}
    return split_identities(
        name, x, identity[rows], eval_identities=eval_identities, min_images=min_images,
        test_fraction=test_fraction, seed=seed, info=info,
    )  # fmt: skip


def identity_folder(
    name: str = "faces",
    root: str | None = None,
    path: str = "faces",
    image_size: int = 32,
    crop: float = 1.0,
    min_images: int = 2,
    eval_identities: int = 20,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> FaceData:
    """``<root>/<path>/<identity>/<image>``: one folder of aligned face crops per identity (torchvision's
    ``ImageFolder``); ``crop`` 1.0 keeps the whole image."""
    from torchvision.datasets import ImageFolder

    folder = resolve_under(path, root)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"face folder {folder} does not exist; expected {folder}/<identity>/<image files> "
            "(set faces.path, and faces.root or ADVSUITE_DATA)"
        )
    try:
        ds = ImageFolder(str(folder), transform=_transform(image_size, crop))
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        raise DatasetNotFoundError(f"face folder {folder}: {exc}") from exc
    x, identity = _stack(ds, ds.targets, str(folder))
    info = {"source": f"identity folders under {folder}", "identities_found": len(ds.classes)}
    return split_identities(
        name, x, identity, eval_identities=eval_identities, min_images=min_images, test_fraction=test_fraction,
        seed=seed, info=info,
    )  # fmt: skip
