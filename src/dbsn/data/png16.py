"""16-bit PNG with two to four channels (gray+alpha, RGB, RGBA), which Pillow reads as 8 bits.

Reading undoes the five PNG row filters over anti-diagonals of the image: a pixel depends
only on its left, upper and upper-left neighbours, so every pixel of one anti-diagonal can
be reconstructed at once, and an image takes ``H + W`` vectorised steps instead of a loop
over its pixels. Interlaced files are refused (re-save them without interlacing).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {0: 1, 4: 2, 2: 3, 6: 4}  # PNG colour type: samples per pixel
CHANNELS_TO_TYPE = {v: k for k, v in COLOUR_TYPES.items()}


class PngError(ValueError):
    """A PNG file this reader cannot decode."""


def header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """``(width, height, bit depth, colour type, interlace)`` of PNG bytes, or None if they are not PNG."""
    if len(data) < 33 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour, interlace


def needs_own_reader(head: bytes) -> bool:
    """Whether PNG bytes (at least the first 33) hold 16-bit samples with 2-4 channels."""
    info = header(head)
    return info is not None and info[2] == 16 and info[3] in (2, 4, 6)


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise PngError("the file is truncated")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length
    raise PngError("the file is truncated (no IEND chunk)")


def read_png16(data: bytes) -> tuple[np.ndarray, bytes | None]:
    """Decode 16-bit PNG bytes to ``(H, W, C)`` uint16, with the embedded ICC profile (or None)."""
    info = header(data)
    if info is None:
        raise PngError("not a PNG file")
    width, height, depth, colour, interlace = info
    if depth != 16 or colour not in COLOUR_TYPES:
        raise PngError(f"expected 16-bit samples of colour type 0, 2, 4 or 6, got {depth}-bit type {colour}")
    if interlace:
        raise PngError("interlaced 16-bit PNG is not read; save it again without interlacing (or as 16-bit TIFF)")
    idat, icc = [], None
    for kind, body in _chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"iCCP":
            name_end = body.find(b"\x00")
            try:
                icc = zlib.decompress(body[name_end + 2:])
            except zlib.error:
                icc = None  # a broken profile is dropped, not the image
    channels = COLOUR_TYPES[colour]
    bpp = 2 * channels
    stride = 1 + width * bpp
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise PngError(f"corrupt image data ({err})") from None
    if len(raw) < stride * height:
        raise PngError(f"the image data is truncated ({len(raw)} of {stride * height} bytes)")
    rows = np.frombuffer(raw, np.uint8, stride * height).reshape(height, stride)
    kinds = rows[:, 0].astype(np.int64)
    if kinds.max(initial=0) > 4:
        raise PngError(f"unknown row filter {int(kinds.max())}")
    filtered = rows[:, 1:].reshape(height, width, bpp).astype(np.int16)
    pixels = _unfilter(filtered, kinds)
    samples = pixels.reshape(height, width, channels, 2)  # big-endian: high byte first
    return (samples[..., 0].astype(np.uint16) << 8) | samples[..., 1], icc


def _unfilter(filtered: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Undo the row filters of ``filtered`` ``(H, W, bpp)`` (PNG spec section 9), one anti-diagonal at a time."""
    height, width, bpp = filtered.shape
    out = np.zeros((height + 1, width + 1, bpp), np.int16)  # a row and a column of zeros before the image
    for k in range(height + width - 1):
        r = np.arange(max(0, k - width + 1), min(height, k + 1))
        c = k - r
        a, b, ul = out[r + 1, c], out[r, c + 1], out[r, c]  # left, up, upper left
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        predictions = np.stack([np.zeros_like(a), a, b, (a + b) >> 1, paeth])
        predicted = predictions[kinds[r], np.arange(len(r))]
        out[r + 1, c + 1] = (filtered[r, c] + predicted) & 255
    return out[1:, 1:].astype(np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_png16(pixels: np.ndarray, icc: bytes | None = None) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, C)`` uint16 (C of 1 to 4) as PNG bytes, each row with the Up filter."""
    if pixels.dtype != np.uint16:
        raise ValueError(f"expected uint16 pixels, got {pixels.dtype}")
    hwc = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width, channels = hwc.shape
    if channels not in CHANNELS_TO_TYPE:
        raise ValueError(f"expected 1 to 4 channels, got {channels}")
    big = np.ascontiguousarray(hwc, ">u2").reshape(height, width * channels).view(np.uint8).astype(np.int16)
    up = (big - np.vstack([np.zeros((1, big.shape[1]), np.int16), big[:-1]])) & 255  # filter 2: minus the row above
    rows = np.hstack([np.full((height, 1), 2, np.int16), up]).astype(np.uint8)
    head = struct.pack(">IIBBBBB", width, height, 16, CHANNELS_TO_TYPE[channels], 0, 0, 0)
    parts = [SIGNATURE, _chunk(b"IHDR", head)]
    if icc:
        parts.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    parts += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _chunk(b"IEND", b"")]
    return b"".join(parts)
