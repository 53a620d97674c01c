"""Reading and writing images: PNG, JPEG and TIFF, 8 and 16 bits, gray and colour.

Images are handled as float32 arrays ``(C, H, W)`` in [0, 1] together with an
:class:`ImageInfo` that remembers the file's bit depth, so that outputs keep it.
Every write goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves a half-written image or checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(ValueError):
    """A file that is missing, not an image, or in a form this package does not read."""


@dataclass
class ImageInfo:
    path: Path
    bits: int  # 8 or 16 (32 for float TIFF)
    channels: int
    alpha: np.ndarray | None = None  # kept aside and written back untouched


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | os.PathLike, channels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as float32 ``(C, H, W)`` in [0, 1] (float TIFFs are read as stored, unclipped).

    Args:
        path: a PNG, JPEG, BMP or TIFF file.
        channels: 1 or 3 to convert (colour to gray by ITU-R 601 luma, gray to colour
            by repetition); None keeps the file's own (1 or 3; an alpha channel is set aside).

    Raises:
        ImageReadError: with the file name and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            raw = tifffile.imread(path)
        else:
            raw = _read_pillow(path)
    except ImageReadError:
        raise
    except Exception as err:  # decoders raise many types; report them all the same way
        raise ImageReadError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from None
    array, bits = _to_unit_float(raw, path)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4) and array.shape[0] not in (1, 3):
        array = np.moveaxis(array, -1, 0)
    if array.ndim != 3 or array.shape[0] not in (1, 2, 3, 4):
        raise ImageReadError(f"{path}: unsupported image shape {raw.shape}; expected (H, W) or (H, W, 1-4)")
    alpha = None
    if array.shape[0] in (2, 4):
        array, alpha = array[:-1], array[-1]
    info = ImageInfo(path, bits, array.shape[0], alpha)
    if channels is not None:
        array = convert_channels(array, channels)
    return np.ascontiguousarray(array, dtype=np.float32), info


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if path.suffix.lower() == ".png" and _png_is_16bit_colour(path):
            raise ImageReadError(
                f"{path}: 16-bit colour PNG is not supported by the image library; save it as a 16-bit TIFF"
            )
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "CMYK":
            im = im.convert("RGB")
        elif im.mode == "1":
            im = im.convert("L")
        return np.asarray(im)


def _png_is_16bit_colour(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _to_unit_float(raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype in (np.uint16, np.int32) and raw.max(initial=0) <= 65535 and raw.min(initial=0) >= 0:
        return raw.astype(np.float32) / 65535.0, 16
    if raw.dtype == np.bool_:
        return raw.astype(np.float32), 8
    if np.issubdtype(raw.dtype, np.floating):
        # float data is taken as it is: noisy images may leave [0, 1], and clipping would bias them
        return raw.astype(np.float32), 32
    raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}; expected 8/16-bit integers or float in [0, 1]")


def convert_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(C, H, W)`` to 1 or 3 channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    c = array.shape[0]
    if c == channels:
        return array
    if channels == 1:
        return (0.299 * array[0] + 0.587 * array[1] + 0.114 * array[2])[None].astype(np.float32)
    return np.repeat(array, 3, axis=0)


def output_suffix(path: Path, bits: int) -> str:
    """The suffix to write a result of ``path`` with: TIFF stays TIFF, JPEG and BMP become PNG
    (no second lossy step), float data (only TIFF holds it) stays TIFF."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return suffix
    return ".tiff" if bits == 32 else ".png"


def quantise(array: np.ndarray, bits: int) -> np.ndarray:
    """Float ``(C, H, W)`` to an ``(H, W[, C])`` array of the given bit depth.

    8 and 16 bits clip to [0, 1]; 32 bits (float TIFF) keep the values as they are
    (a noise map in 0-255 units, a noisy image that was never clipped).
    """
    if bits != 32:
        array = np.clip(array, 0.0, 1.0)
    hwc = np.moveaxis(array, 0, -1)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if bits == 8:
        return np.round(hwc * 255.0).astype(np.uint8)
    if bits == 16:
        return np.round(hwc * 65535.0).astype(np.uint16)
    return hwc.astype(np.float32)


def write_image(path: str | os.PathLike, array: np.ndarray, bits: int = 8, alpha: np.ndarray | None = None) -> Path:
    """Write float ``(C, H, W)`` to ``path`` atomically, at ``bits`` (8, 16, or 32 for float TIFF; see :func:`quantise`)."""
    path = Path(path)
    if alpha is not None:
        array = np.concatenate([array, alpha[None]], axis=0)
    pixels = quantise(array, bits)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack")
        elif suffix == ".png" and bits == 16 and pixels.ndim == 3:
            raise ValueError(f"{path}: 16-bit colour is written as TIFF; use a .tif name")
        elif suffix == ".png":
            from PIL import Image

            Image.fromarray(pixels).save(tmp, format="PNG")
        else:
            raise ValueError(f"{path}: cannot write {suffix!r}; use .png or .tif")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
