"""What a reversible adversarial example carries: the compressed recovery payload and its small pixel header.

Two pieces, both versioned:

- The **header** (:func:`header_bits`): a few dozen bits written by LSB replacement into a band of the
  first channel in B-R-G order (blue; the only channel of a grayscale image), at the top of the image, or
  at the bottom when the patch touches the top rows. It tells the decoder what it must know before it can
  read anything else: the patch rectangle (the pixels that carry nothing) and the PEE threshold of each
  channel. It ends in a CRC-16 so the decoder can tell a real header from arbitrary pixels.
- The **payload** (:func:`pack`), embedded reversibly by PEE: ``b"RA"``, a version byte, a codec byte,
  a 16-byte BLAKE2b digest (of the original image, the patch the example shows, and the payload's own
  bytes, so that no bit of it can change unnoticed), then the compressed body: the patch
  rectangle, each channel's histogram cuts (:mod:`.rdh`), the original pixels under the patch (PNG
  "Sub"-filtered so they compress), the band's original LSBs (the header overwrote them) and the
  channels' location maps. Lengths the decoder can work out (image shape, map sizes) are not stored.

Every malformed field raises :class:`RestoreError`; nothing here guesses.
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from advsuite.errors import AdvsuiteError

MAGIC = b"RA"
VERSION = 1
#: codec name -> id byte; "auto" in :func:`pack` keeps the smallest
CODECS = {"none": 0, "zlib": 1, "lzma": 2}
DIGEST_BYTES = 16
#: the header: 4-bit magic, 2-bit version, rectangle, 6-bit thresholds, CRC-16
HEADER_MAGIC, HEADER_VERSION = 0b1011, 1
THRESHOLD_BITS = 6
# a small dictionary: payloads are a few hundred bytes, and the default 64 MiB one costs milliseconds to set up
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 16}]
_RECT = struct.Struct(">4H")  # top, left, height, width


class RestoreError(AdvsuiteError, ValueError):
    """An image is not a reversible adversarial example, or it was altered after it was made."""


class Rect(NamedTuple):
    """A patch rectangle in pixels: rows ``top:top + height``, columns ``left:left + width``."""

    top: int
    left: int
    height: int
    width: int

    def inside(self, h: int, w: int) -> bool:
        return (
            self.height > 0
            and self.width > 0
            and self.top >= 0
            and self.left >= 0
            and (self.top + self.height <= h and self.left + self.width <= w)
        )

    def mask(self, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        out[self.top : self.top + self.height, self.left : self.left + self.width] = True
        return out


def image_digest(original: np.ndarray, patch: np.ndarray) -> bytes:
    """BLAKE2b-128 over the original image and the patch pixels the example shows (tampering with either shows)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for a in (original, patch):
        h.update(struct.pack(">3H", *a.shape))
        h.update(np.ascontiguousarray(a, np.uint8).tobytes())
    return h.digest()


def seal(image_key: bytes, data: bytes) -> bytes:
    """The digest stored in a packed payload: :func:`image_digest` bound to the payload's other bytes
    (a compressor may ignore some bits, e.g. deflate's final padding; changing them must still show)."""
    head = 4 + DIGEST_BYTES
    return hashlib.blake2b(image_key + data[:4] + data[head:], digest_size=DIGEST_BYTES).digest()


# ----------------------------------------------------------------------------------- header


def _coord_bits(h: int, w: int) -> int:
    return max(h, w).bit_length()


def header_length(shape: tuple[int, int, int]) -> int:
    """Number of header bits for a (C, H, W) image."""
    c, h, w = shape
    return 4 + 2 + 4 * _coord_bits(h, w) + THRESHOLD_BITS * c + 16


def _to_bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def _from_bits(bits: np.ndarray) -> int:
    return int("".join(map(str, bits.tolist())) or "0", 2)


def _crc16(bits: list[int] | np.ndarray) -> int:
    return zlib.crc32(np.packbits(np.asarray(bits, np.uint8)).tobytes()) & 0xFFFF


def header_bits(shape: tuple[int, int, int], rect: Rect, thresholds: tuple[int, ...]) -> np.ndarray:
    """The header as a 0/1 array (``thresholds`` in B-R-G order)."""
    _, h, w = shape
    nb = _coord_bits(h, w)
    bits = _to_bits(HEADER_MAGIC, 4) + _to_bits(HEADER_VERSION, 2)
    for v in rect:
        bits += _to_bits(v, nb)
    for t in thresholds:
        bits += _to_bits(t, THRESHOLD_BITS)
    bits += _to_bits(_crc16(bits), 16)
    return np.array(bits, np.uint8)


def parse_header(bits: np.ndarray, shape: tuple[int, int, int]) -> tuple[Rect, tuple[int, ...]] | None:
    """(rect, thresholds) if ``bits`` is a valid header for an image of ``shape``, else None."""
    c, h, w = shape
    nb = _coord_bits(h, w)
    if len(bits) != header_length(shape) or _crc16(bits[:-16]) != _from_bits(bits[-16:]):
        return None
    if _from_bits(bits[:4]) != HEADER_MAGIC or _from_bits(bits[4:6]) != HEADER_VERSION:
        return None
    rect = Rect(*(_from_bits(bits[6 + i * nb : 6 + (i + 1) * nb]) for i in range(4)))
    start = 6 + 4 * nb
    thresholds = tuple(_from_bits(bits[start + i * 6 : start + (i + 1) * 6]) for i in range(c))
    return (rect, thresholds) if rect.inside(h, w) else None


# ----------------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class Payload:
    """Everything :func:`advsuite.attacks.reversible.restore` needs besides the pixels it decodes."""

    rect: Rect
    #: the original uint8 pixels under the patch, (C, height, width)
    patch_pixels: np.ndarray
    #: per channel (B-R-G order), the histogram cuts of the shrink (:func:`.rdh.shrink`)
    cuts: tuple[tuple[int, int], ...]
    #: the original LSBs of the header band
    band_lsbs: np.ndarray
    #: the channels' location maps, concatenated in B-R-G order (the decoder knows each one's length)
    location_bits: np.ndarray
    #: :func:`image_digest` when packing; :func:`seal` of it when unpacked
    digest: bytes


def _sub_filter(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.int16)
    out[..., 1:] -= a[..., :-1].astype(np.int16)
    return (out % 256).astype(np.uint8)


def _unsub_filter(a: np.ndarray) -> np.ndarray:
    return (np.cumsum(a.astype(np.int64), axis=-1) % 256).astype(np.uint8)


def _compress(body: bytes, codec: str) -> bytes:
    if codec == "zlib":
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)  # raw deflate: no header or checksum to pay for
        return c.compress(body) + c.flush()
    if codec == "lzma":
        return lzma.compress(body, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return body


def _decompress(data: bytes, codec_id: int) -> bytes:
    try:
        if codec_id == CODECS["zlib"]:
            d = zlib.decompressobj(-15)
            out = d.decompress(data) + d.flush()
            if not d.eof or d.unused_data:
                raise ValueError("truncated or trailing deflate data")
            return out
        if codec_id == CODECS["lzma"]:
            return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        if codec_id == CODECS["none"]:
            return data
    except (zlib.error, lzma.LZMAError, ValueError) as err:
        raise RestoreError(f"the recovery payload does not decompress ({err})") from None
    raise RestoreError(f"unknown payload codec id {codec_id}")


def pack(payload: Payload, codec: str = "auto") -> bytes:
    """The payload as bytes; ``codec`` is one of :data:`CODECS` or ``"auto"`` (the smallest)."""
    cuts = [v if high <= 255 else 0 for low, high in payload.cuts for v in (low, high)]  # T = 0: no cuts
    body = b"".join(
        [
            _RECT.pack(*payload.rect),
            bytes(cuts),
            _sub_filter(payload.patch_pixels).tobytes(),
            np.packbits(np.concatenate([payload.band_lsbs, payload.location_bits]).astype(np.uint8)).tobytes(),
        ]
    )
    names = list(CODECS) if codec == "auto" else [codec]
    packed = {name: _compress(body, name) for name in names}
    best = min(names, key=lambda name: (len(packed[name]), CODECS[name]))
    unsealed = MAGIC + bytes([VERSION, CODECS[best]]) + bytes(DIGEST_BYTES) + packed[best]
    return unsealed[:4] + seal(payload.digest, unsealed) + unsealed[4 + DIGEST_BYTES :]


def codec_of(data: bytes) -> str:
    """The codec name a packed payload was written with."""
    return {v: k for k, v in CODECS.items()}[data[3]]


def unpack(data: bytes, shape: tuple[int, int, int]) -> Payload:
    """Invert :func:`pack` for an image of ``shape`` (C, H, W), checking every length."""
    c, h, w = shape
    head = 4 + DIGEST_BYTES
    if len(data) < head or data[:2] != MAGIC:
        raise RestoreError("the recovery payload has no valid magic: not a reversible adversarial example")
    if data[2] != VERSION:
        raise RestoreError(f"recovery payload version {data[2]} is not supported (this advsuite reads {VERSION})")
    body = _decompress(data[head:], data[3])
    if len(body) < _RECT.size + 2 * c:
        raise RestoreError("the recovery payload is truncated")
    rect = Rect(*_RECT.unpack_from(body))
    if not rect.inside(h, w):
        raise RestoreError(f"the recovery payload holds a patch rectangle {tuple(rect)} outside the image")
    pos = _RECT.size
    cuts = tuple((body[pos + 2 * i], body[pos + 2 * i + 1]) for i in range(c))
    pos += 2 * c
    n_patch = c * rect.height * rect.width
    n_band = header_length(shape)
    if len(body) < pos + n_patch + (n_band + 7) // 8:
        raise RestoreError("the recovery payload is truncated")
    raw = np.frombuffer(body, np.uint8, n_patch, pos).reshape(c, rect.height, rect.width)
    bits = np.unpackbits(np.frombuffer(body, np.uint8, offset=pos + n_patch))
    return Payload(rect, _unsub_filter(raw), cuts, bits[:n_band], bits[n_band:], data[4:head])
