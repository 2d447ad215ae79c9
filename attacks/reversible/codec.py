"""Make a patched image reversible, and restore the original from it, bit-exactly.

The scheme of Chen, Zhu, Yin, "Reversible Attack based on Local Visible Adversarial Perturbation"
(arXiv 2110.02700): the pixels under the adversarial patch, the patch's position and size and a digest
are compressed (:mod:`.payload`) and hidden by reversible data hiding (:mod:`.rdh`) in the pixels outside
the patch, filling the blue channel first, then red, then green (the paper's B-R-G order, a principle from
Yang, Zou, Huang, Zhang, IEEE TCSVT 2022: the eye is least sensitive to blue). The patch itself is never
touched, so the example attacks as the plain patched image does, up to what the embedding changes around it.

Images are uint8 arrays of shape (C, H, W) with C = 3 (RGB; embedding order B, R, G) or C = 1 (grayscale).
Blue takes as much of the payload as it can, then red, then green (:func:`_search`); the last channel used
gets the smallest threshold that completes the payload, and a channel with threshold 0 is left unchanged.

:func:`restore` never returns an unverified image: it checks the header CRC, every payload field, the
digest of the restored original, and that embedding the recovered payload into that original again gives
back the input pixel for pixel. Anything else raises :class:`RestoreError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from advsuite.errors import InputError

from .payload import (
    Payload,
    Rect,
    RestoreError,
    codec_of,
    header_bits,
    header_length,
    image_digest,
    pack,
    parse_header,
    seal,
)
from .payload import unpack as unpack_payload
from .rdh import MAX_THRESHOLD, PlaneDecodeError, pee_embed, pee_extract, shrink, unshrink, zone_size

#: bits of the length field in front of the payload in the hidden stream
LENGTH_BITS = 24
#: thresholds each channel tries, roughly geometric (then bisected below the first that fits)
THRESHOLD_GRID = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 63)
BANDS = ("top", "bottom")

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)


def channel_order(channels: int) -> tuple[int, ...]:
    """Channel indices in embedding order: B, R, G for RGB; the only channel for grayscale."""
    if channels == 3:
        return (2, 0, 1)
    if channels == 1:
        return (0,)
    raise InputError(f"reversible embedding needs RGB (C=3) or grayscale (C=1) images, got C={channels}")


@dataclass(frozen=True)
class Hidden:
    """The outcome of :func:`hide` for one image."""

    #: the reversible example, uint8 (C, H, W); None when the payload does not fit
    image: np.ndarray | None
    fits: bool
    #: why it does not fit ("" when it does)
    reason: str
    #: bits of the compressed payload (what the PEE layer must carry, without the length field)
    payload_bits: int
    #: payload bits the PEE layer could carry at ``max_threshold`` in every channel
    capacity_bits: int
    #: PEE threshold per channel, B-R-G order
    thresholds: tuple[int, ...]
    codec: str
    band: str


# ----------------------------------------------------------------------------------- layout


def _band_positions(shape: tuple[int, int, int], band: str) -> np.ndarray:
    """Flat (H*W) indices of the header pixels in the first channel of the embedding order."""
    _, h, w = shape
    n = header_length(shape)
    rows = -(-n // w)
    if rows > h // 2:
        raise InputError(f"a {h}x{w} image is too small for the {n}-bit reversible-embedding header")
    start = 0 if band == "top" else (h - rows) * w
    return start + np.arange(n)


def _carriers(shape: tuple[int, int, int], rect: Rect, band_pos: np.ndarray) -> list[np.ndarray]:
    """Per channel (B-R-G order), the pixels that carry payload: all but the patch and the header."""
    _, h, w = shape
    free = ~rect.mask(h, w)
    first = free.copy()
    first.reshape(-1)[band_pos] = False
    return [first] + [free] * (len(channel_order(shape[0])) - 1)


def _choose_band(shape: tuple[int, int, int], rect: Rect) -> str | None:
    _, h, w = shape
    patch = rect.mask(h, w).reshape(-1)
    for band in BANDS:
        if not patch[_band_positions(shape, band)].any():
            return band
    return None


@dataclass
class _Prepared:
    """A patched image with its header written and its carrier planes shrunk, ready for PEE."""

    work: np.ndarray
    carriers: list[np.ndarray]
    band_lsbs: np.ndarray
    location_bits: np.ndarray
    cuts: tuple[tuple[int, int], ...]


def _prepare(patched: np.ndarray, rect: Rect, band: str, thresholds: tuple[int, ...]) -> _Prepared:
    """Write the header into the band, then shrink every carrier plane."""
    shape = patched.shape
    order = channel_order(shape[0])
    band_pos = _band_positions(shape, band)
    carriers = _carriers(shape, rect, band_pos)
    work = patched.astype(np.int32)
    first = work[order[0]].reshape(-1)  # a view: writes go into work
    band_lsbs = (first[band_pos] & 1).astype(np.uint8)
    first[band_pos] = (first[band_pos] & ~1) | header_bits(shape, rect, thresholds)
    maps, cuts = [], []
    for c, mask, t in zip(order, carriers, thresholds, strict=True):
        work[c], location_map, cut = shrink(work[c], mask, t)
        maps.append(location_map)
        cuts.append(cut)
    return _Prepared(work, carriers, band_lsbs, np.concatenate(maps), tuple(cuts))


def _embed(
    work: np.ndarray, carriers: list[np.ndarray], thresholds: tuple[int, ...], stream: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """PEE-embed ``stream`` into the channels in B-R-G order: (marked, bits used, capacity)."""
    marked = work.copy()
    used = capacity = 0
    for c, mask, t in zip(channel_order(work.shape[0]), carriers, thresholds, strict=True):
        if t:
            marked[c], n, k = pee_embed(work[c], mask, t, stream[used:])
            used, capacity = used + n, capacity + k
    return marked, used, capacity


def _stream(data: bytes) -> np.ndarray:
    length = np.unpackbits(np.frombuffer(len(data).to_bytes(LENGTH_BITS // 8, "big"), np.uint8))
    return np.concatenate([length, np.unpackbits(np.frombuffer(data, np.uint8))])


# ----------------------------------------------------------------------------------- public API


def check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise InputError(f"{name} must be a uint8 array of shape (C, H, W); quantise float images first")
    channel_order(image.shape[0])


def as_rect(mask: np.ndarray | Rect) -> Rect:
    """A rectangle from a bool (H, W) patch mask (which must be one filled rectangle)."""
    if isinstance(mask, Rect):
        return mask
    rows, cols = np.nonzero(np.asarray(mask, bool))
    if not len(rows):
        raise InputError("the patch mask is empty")
    rect = Rect(int(rows.min()), int(cols.min()), int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1)
    if len(rows) != rect.height * rect.width:
        raise InputError("the patch mask must be one filled rectangle")
    return rect


def hide(
    original: np.ndarray,
    patched: np.ndarray,
    rect: Rect,
    *,
    max_threshold: int = MAX_THRESHOLD,
    codec: str = "auto",
) -> Hidden:
    """Embed what restores ``original`` into the pixels of ``patched`` outside ``rect``.

    ``patched`` must equal ``original`` outside the patch rectangle. The result is verified with
    :func:`restore` before it is returned.
    """
    check_image(original, "original")
    check_image(patched, "patched")
    shape = original.shape
    _, h, w = shape
    if patched.shape != shape:
        raise InputError(f"patched has shape {patched.shape}, original {shape}")
    if not rect.inside(h, w):
        raise InputError(f"patch rectangle {tuple(rect)} does not lie inside a {h}x{w} image")
    if ((patched != original) & ~rect.mask(h, w)).any():
        raise InputError("patched differs from original outside the patch rectangle")
    if not 1 <= max_threshold <= MAX_THRESHOLD:
        raise InputError(f"max_threshold must be in [1, {MAX_THRESHOLD}], got {max_threshold}")
    n_ch = shape[0]
    band = _choose_band(shape, rect)
    if band is None:
        return Hidden(None, False, "the patch covers both header bands", 0, 0, (0,) * n_ch, "", "")
    digest = image_digest(original, patched[:, rect.top : rect.top + rect.height, rect.left : rect.left + rect.width])
    patch_pixels = original[:, rect.top : rect.top + rect.height, rect.left : rect.left + rect.width]

    def attempt(ts: tuple[int, ...]) -> tuple[np.ndarray | None, bytes, int]:
        """At thresholds ``ts``: the marked image (None when the payload does not fit), the payload, and
        the room left (PEE capacity minus the stream's length; negative when it does not fit)."""
        prep = _prepare(patched, rect, band, ts)
        payload = Payload(rect, patch_pixels, prep.cuts, prep.band_lsbs, prep.location_bits, digest)
        data = pack(payload, codec)
        stream = _stream(data)
        marked, used, room = _embed(prep.work, prep.carriers, ts, stream)
        return (marked if used == len(stream) else None), data, room - len(stream)

    capacity_bits = capacity(patched, rect, max_threshold=max_threshold)
    ts = _search(lambda ts: attempt(ts)[2], n_ch, max_threshold)
    marked, data, _ = attempt(ts)
    if marked is None:
        reason = f"payload of {8 * len(data)} bits does not fit (PEE capacity {capacity_bits} bits)"
        return Hidden(None, False, reason, 8 * len(data), capacity_bits, ts, "", band)
    image = marked.astype(np.uint8)
    if not np.array_equal(restore(image), original):  # a bug if it ever fires; never hand out a broken example
        raise AssertionError("reversible embedding failed its own restore check")
    return Hidden(image, True, "", 8 * len(data), capacity_bits, ts, codec_of(data), band)


def _search(room: Callable[[tuple[int, ...]], int], n_ch: int, max_threshold: int) -> tuple[int, ...]:
    """Per-channel thresholds, B-R-G order: blue takes as much as it can, then red, then green; the last
    channel used gets the smallest threshold that completes the payload.

    A larger threshold gives more capacity but also a longer location map, so the room left is not
    monotone in ``T``: each channel scans :data:`THRESHOLD_GRID` up to ``max_threshold``; at the first
    value that fits it bisects down to the smallest fitting threshold (every value returned as fitting
    has been tried); when none fits, the channel keeps the value with the most room and the next
    channel takes the rest. The result may not fit: the caller checks.
    """
    grid = sorted({t for t in THRESHOLD_GRID if t < max_threshold} | {max_threshold})
    ts = [0] * n_ch
    for k in range(n_ch):
        previous, best, best_room = 0, max_threshold, None
        for t in grid:
            ts[k] = t
            r = room(tuple(ts))
            if r >= 0:
                lo, hi = previous + 1, t
                while lo < hi:
                    ts[k] = (lo + hi) // 2
                    lo, hi = (lo, ts[k]) if room(tuple(ts)) >= 0 else (ts[k] + 1, hi)
                ts[k] = hi
                return tuple(ts)
            if best_room is None or r > best_room:
                best, best_room = t, r
            previous = t
        ts[k] = best
    return tuple(ts)


def capacity(image: np.ndarray, mask: np.ndarray | Rect, *, max_threshold: int = MAX_THRESHOLD) -> int:
    """Payload bits the PEE layer can carry in ``image`` around the patch ``mask``, thresholds at maximum.

    Measured by embedding zeros (the count with real data differs by a few bits, since the second pass
    predicts from marked pixels); the header and the length field are already taken off. 0 when the
    patch leaves no room for the header.
    """
    check_image(image)
    rect = as_rect(mask)
    band = _choose_band(image.shape, rect)
    if band is None:
        return 0
    ts = (max_threshold,) * image.shape[0]
    prep = _prepare(image, rect, band, ts)
    _, _, total = _embed(prep.work, prep.carriers, ts, np.zeros(0, np.uint8))
    return max(total - LENGTH_BITS, 0)


def restore(image: ImageT) -> ImageT:
    """The original image, bit-exact, from a reversible adversarial example (uint8 (C, H, W) array or tensor).

    Raises :class:`RestoreError` when ``image`` carries no valid recovery data or was altered.
    """
    if isinstance(image, torch.Tensor):
        return torch.from_numpy(restore(image.detach().cpu().numpy())).to(image.device)
    check_image(image)
    errors = []
    for band in BANDS:
        parsed = parse_header(
            image[channel_order(image.shape[0])[0]].reshape(-1)[_band_positions(image.shape, band)] & 1, image.shape
        )
        if parsed is None:
            continue
        try:
            return _restore_with(image, band, *parsed)
        except RestoreError as err:  # a header read by chance from patch pixels: try the other band
            errors.append(str(err))
    if errors:
        raise RestoreError(errors[-1])
    raise RestoreError("no reversible-embedding header found: not a reversible adversarial example, or altered")


def _restore_with(image: np.ndarray, band: str, rect: Rect, thresholds: tuple[int, ...]) -> np.ndarray:
    shape = image.shape
    _, h, w = shape
    order = channel_order(shape[0])
    band_pos = _band_positions(shape, band)
    if rect.mask(h, w).reshape(-1)[band_pos].any() or max(thresholds) > MAX_THRESHOLD:
        raise RestoreError("the header is inconsistent (patch over the header, or threshold out of range)")
    carriers = _carriers(shape, rect, band_pos)
    work = image.astype(np.int32)
    bits = []
    try:
        for c, mask, t in zip(order, carriers, thresholds, strict=True):
            if t:
                work[c], b = pee_extract(work[c], mask, t)
                bits.append(b)
    except PlaneDecodeError as err:
        raise RestoreError(f"the image was altered: {err}") from None
    stream = np.concatenate(bits) if bits else np.zeros(0, np.uint8)
    n_bytes = int.from_bytes(np.packbits(stream[:LENGTH_BITS]).tobytes(), "big") if len(stream) >= LENGTH_BITS else -1
    if n_bytes < 0 or LENGTH_BITS + 8 * n_bytes > len(stream):
        raise RestoreError("the hidden stream is shorter than its length field says: the image was altered")
    data = np.packbits(stream[LENGTH_BITS : LENGTH_BITS + 8 * n_bytes]).tobytes()
    payload = unpack_payload(data, shape)
    if payload.rect != rect or len(payload.band_lsbs) != len(band_pos):
        raise RestoreError("the payload does not match the image's header: the image was altered")
    sizes = [
        zone_size(work[c], m, t, cut) for c, m, t, cut in zip(order, carriers, thresholds, payload.cuts, strict=True)
    ]
    maps = np.split(payload.location_bits, np.cumsum(sizes))
    if len(maps[-1]) >= 8 or maps[-1].any():
        raise RestoreError("the payload's location maps do not fit the decoded planes: the image was altered")
    try:
        for c, mask, t, cut, location_map in zip(order, carriers, thresholds, payload.cuts, maps, strict=False):
            work[c] = unshrink(work[c], mask, t, location_map, cut)
    except PlaneDecodeError as err:
        raise RestoreError(f"the image was altered: {err}") from None
    first = work[order[0]].reshape(-1)
    first[band_pos] = (first[band_pos] & ~1) | payload.band_lsbs
    rows, cols = slice(rect.top, rect.top + rect.height), slice(rect.left, rect.left + rect.width)
    work[:, rows, cols] = payload.patch_pixels
    if work.min() < 0 or work.max() > 255:
        raise RestoreError("restored values leave [0, 255]: the image was altered")
    original = work.astype(np.uint8)
    if seal(image_digest(original, image[:, rows, cols]), data) != payload.digest:
        raise RestoreError("the restored image does not match the recorded digest: the image was altered")
    # the strongest check: the payload embedded into that original again (zero padding after it, as the
    # encoder pads) gives exactly this image; so even a changed padding bit is caught
    patched = original.copy()
    patched[:, rows, cols] = image[:, rows, cols]
    prep = _prepare(patched, rect, band, thresholds)
    canonical = stream[: LENGTH_BITS + 8 * n_bytes]
    again, used, _ = _embed(prep.work, carriers, thresholds, canonical)
    if used != len(canonical) or not np.array_equal(again, image):
        raise RestoreError("the image is not the example its recovery data describes: it was altered")
    return original
