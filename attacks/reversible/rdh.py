"""Reversible data hiding on one 8-bit image plane: prediction-error expansion with histogram shifting.

- Prediction-error expansion (PEE) with histogram shifting: Thodi & Rodriguez, "Expansion Embedding
  Techniques for Reversible Watermarking", IEEE TIP 16(3), 2007. With threshold ``T`` and prediction
  error ``e = x - x̂``: ``-T <= e < T`` is expanded to ``2e + b`` (one bit ``b``), ``e >= T`` is shifted
  to ``e + T`` and ``e < -T`` to ``e - T``. Every pixel moves by at most ``T``.
- Predictor: the rhombus (4-neighbour floor mean) with the two-pass checkerboard scheme of Sachnev, Kim,
  Nam, Suresh, Shi, "Reversible Watermarking Algorithm Using Sorting and Prediction", IEEE TCSVT 19(7),
  2009: the "cross" pixels ((i + j) even) are predicted from their "dot" neighbours, which are untouched
  in that pass, then the dots from the marked crosses. Each pass is one vectorised step, and the decoder
  undoes the passes in reverse order with exactly the same predictions.
- Overflow: histogram shrinking, in the spirit of histogram-shifting RDH (Ni, Shi, Ansari, Su, IEEE TCSVT
  16(3), 2006): before embedding, carrier values up to a low cut move up by ``T`` and values from a high cut
  on move down by ``T`` (:func:`shrink`), so every carrier lies in [T, 255 - T] and no marked value leaves
  [0, 255]; a location map (one bit per carrier left within ``T`` of a cut) tells the decoder which to move
  back. The cuts sit where the histogram is thinnest, so the map stays short; it travels in the payload.

Differences from Sachnev et al.: no sorting of pixels by local variance (the payload fills carriers in
raster order), a single threshold per plane, and image borders predicted from the neighbours that exist.
Planes are int32 NumPy arrays of shape (H, W) holding values 0..255; ``carriers`` is a bool (H, W) mask of
the pixels that may change (everything else is only read, as a neighbour).
"""

from __future__ import annotations

import numpy as np

#: largest threshold (6 bits in the header); shrinking needs room for two cuts more than 2T apart
MAX_THRESHOLD = 63


class PlaneDecodeError(ValueError):
    """A marked plane cannot be decoded (it was not produced by :func:`pee_embed` or was altered)."""


def _parity(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.add.outer(np.arange(h), np.arange(w)) % 2


def rhombus_prediction(plane: np.ndarray) -> np.ndarray:
    """Floor of the mean of each pixel's 4-neighbours that lie inside the plane."""
    p = np.pad(plane.astype(np.int32), 1)
    n = np.pad(np.ones(plane.shape, np.int32), 1)
    total = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    count = n[:-2, 1:-1] + n[2:, 1:-1] + n[1:-1, :-2] + n[1:-1, 2:]
    return total // np.maximum(count, 1)


def _zones(plane: np.ndarray, carriers: np.ndarray, t: int, cuts: tuple[int, int]) -> np.ndarray:
    """Carriers whose shrunk value is ambiguous: moved there by :func:`shrink`, or there already."""
    low, high = cuts
    ambiguous = ((plane > low) & (plane <= low + t)) | ((plane >= high - t) & (plane < high))
    return carriers & ambiguous


def choose_cuts(plane: np.ndarray, carriers: np.ndarray, t: int) -> tuple[int, int]:
    """Where to cut the histogram: values ``<= low`` move up by ``T``, values ``>= high`` down by ``T``.

    Any ``low >= T - 1`` and ``high <= 256 - T`` with ``high - low > 2T`` empties [0, T) and (255 - T, 255]
    and keeps the two moved ranges apart. Only the carriers within ``T`` of a cut need a location-map bit,
    so the pair is chosen where the carriers' histogram is thinnest (for a digit on a black background:
    well above 0, not at it).
    """
    hist = np.bincount(plane[carriers].ravel(), minlength=256)
    window = np.convolve(hist, np.ones(2 * t, np.int64))  # window[k] = hist[k - 2T + 1 .. k]
    lows = np.arange(t - 1, 256 - 3 * t)
    highs = np.arange(3 * t, 257 - t)
    cost_low = window[lows + t]  # the values low - T + 1 .. low + T
    cost_high = window[highs + t - 1]  # the values high - T .. high + T - 1
    # for each low, the cheapest high > low + 2T: a suffix minimum over highs
    best_high = np.minimum.accumulate(cost_high[::-1])[::-1]
    first = np.searchsorted(highs, lows + 2 * t + 1)
    total = cost_low + best_high[first]
    i = int(np.argmin(total))
    j = int(first[i] + np.flatnonzero(cost_high[first[i] :] == best_high[first[i]])[0])
    return int(lows[i]), int(highs[j])


def shrink(plane: np.ndarray, carriers: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Empty [0, T) and (255 - T, 255] of the carriers: (shrunk plane, location map in raster order, cuts).

    A generalisation of the ``x < T -> x + T`` shrink: values up to the low cut move up by ``T`` and values
    from the high cut on move down by ``T``; the location map says, for each carrier left in an ambiguous
    zone, whether it was moved. With ``T = 0`` nothing changes.
    """
    x = plane.astype(np.int32).copy()
    if t == 0:
        return x, np.zeros(0, np.uint8), (0, 256)
    cuts = choose_cuts(x, carriers, t)
    down = carriers & (x >= cuts[1])
    up = carriers & (x <= cuts[0])
    x[up] += t
    x[down] -= t
    location_map = (up | down)[_zones(x, carriers, t, cuts)]
    return x, location_map.astype(np.uint8), cuts


def zone_size(plane: np.ndarray, carriers: np.ndarray, t: int, cuts: tuple[int, int]) -> int:
    """Length of the location map :func:`unshrink` needs for this shrunk plane."""
    return int(_zones(plane, carriers, t, cuts).sum()) if t else 0


def unshrink(
    plane: np.ndarray, carriers: np.ndarray, t: int, location_map: np.ndarray, cuts: tuple[int, int]
) -> np.ndarray:
    """Invert :func:`shrink` given its location map and cuts."""
    x = plane.astype(np.int32).copy()
    if t == 0:
        return x
    low, high = cuts
    if not (t - 1 <= low and high <= 256 - t and high - low > 2 * t):
        raise PlaneDecodeError(f"histogram cuts {cuts} are impossible for threshold {t}")
    zone = _zones(x, carriers, t, cuts)
    if int(zone.sum()) != len(location_map):
        raise PlaneDecodeError(f"location map has {len(location_map)} bits, the plane needs {int(zone.sum())}")
    moved = carriers & (((x >= t) & (x <= low)) | ((x >= high) & (x <= 255 - t)))  # unambiguous moves
    moved[zone] = location_map.astype(bool)
    # moved up: at most low + T; moved down: at least high - T, which is larger
    x[moved & (x <= low + t)] -= t
    x[moved & (x >= high - t)] += t
    return x


def pee_embed(plane: np.ndarray, carriers: np.ndarray, t: int, bits: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Embed the leading bits of ``bits`` into a shrunk plane; return (marked plane, bits used, capacity).

    The capacity is the number of expandable carriers; those beyond the end of ``bits`` carry a 0 (padding),
    so the decoder always reads ``capacity`` bits and the caller knows where its stream ends.
    """
    x = plane.astype(np.int32).copy()
    parity = _parity(x.shape)
    used = capacity = 0
    for side in (0, 1):
        sel = carriers & (parity == side)
        pred = rhombus_prediction(x)[sel]
        e = x[sel] - pred
        expand = (e >= -t) & (e < t)
        k = int(expand.sum())
        chunk = bits[used : used + k].astype(np.int32)
        b = np.zeros(k, np.int32)
        b[: len(chunk)] = chunk
        marked = np.where(e >= t, e + t, e - t)
        marked[expand] = 2 * e[expand] + b
        x[sel] = pred + marked
        used += len(chunk)
        capacity += k
    if x.min(initial=0) < 0 or x.max(initial=0) > 255:
        raise AssertionError("pee_embed needs a plane shrunk with the same threshold")  # a bug, not bad input
    return x, used, capacity


def pee_extract(marked: np.ndarray, carriers: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`pee_embed`: (shrunk plane, every embedded bit including the padding)."""
    x = marked.astype(np.int32).copy()
    parity = _parity(x.shape)
    parts: list[np.ndarray] = []
    for side in (1, 0):  # the reverse of the embedding order
        sel = carriers & (parity == side)
        pred = rhombus_prediction(x)[sel]
        m = x[sel] - pred
        expand = (m >= -2 * t) & (m < 2 * t)
        parts.insert(0, (m[expand] & 1).astype(np.uint8))
        e = np.where(m >= 2 * t, m - t, m + t)
        e[expand] = m[expand] >> 1
        x[sel] = pred + e
    if x.min(initial=0) < 0 or x.max(initial=0) > 255:
        raise PlaneDecodeError("decoded pixel values leave [0, 255]")
    return x, np.concatenate(parts)
