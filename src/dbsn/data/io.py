"""Reading and writing images: PNG, JPEG and TIFF, 8 and 16 bits, gray and colour, and TIFF stacks.

An image file is read as float32 planes ``(N, C, H, W)`` in [0, 1], ``C`` of 1 (gray) or 3
(colour), ``N`` of 1 for an ordinary picture and more for a stack (a multi-page, ImageJ or
OME TIFF with ``Z``, ``T``, ``C`` or other axes). An :class:`ImageInfo` keeps what the file
had, so that an output written "like" it has the same bit depth and dtype, axes, alpha
channel, ICC profile, EXIF data and TIFF metadata.

The rules, each applied to every file:

- How many pixels a file may hold (all its planes together) is checked from its header
  before anything is decoded: :data:`MAX_PIXELS` by default, ``max_pixels`` to change it.
- The layout comes from the file (Pillow's mode, tifffile's axes), never from the shape
  of the array: a 3-page stack is three gray planes, and a 1 x 3 RGB picture is colour.
  A TIFF is colour only where it says RGB; other samples per pixel are planes of a stack.
- JPEG EXIF orientation is applied, so a phone photo comes out the right way up.
- Float pixels are taken on a 0-1 scale and kept unclipped (noise may take them a little
  outside); NaN or infinite pixels, or values outside :data:`FLOAT_RANGE` (a 0-255 image
  stored as float, say), are refused with what to do.

Every write goes to a temporary file in the target folder and is renamed into place, so
a crash never leaves a half-written image or checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .png16 import PngError, needs_own_reader, read_png16, write_png16

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_PIXELS = 2**28  # per file, all planes together: a 16384 x 16384 image, 1 GiB as float32 gray
FLOAT_RANGE = (-1.0, 2.0)  # float images are on a 0-1 scale; noisy ones stray outside it, not this far
SPATIAL_AXES = "YX"


class ImageReadError(ValueError):
    """A file that is missing, not an image, or in a form this package does not read."""


@dataclass
class ImageInfo:
    """What a file held besides its pixels, to write results like it.

    ``bits`` is 8 or 16 for integer pixels (scaled by 255 or 65535) and 32 for float.
    ``shape`` and ``axes`` are the array as the file stores it (tifffile's axes letters for
    TIFF, ``YX`` or ``YXS`` otherwise); ``planes`` how many 2-D images it holds.
    """

    path: Path
    bits: int
    channels: int
    alpha: np.ndarray | None = None  # (N, H, W) in [0, 1], kept aside and written back untouched
    dtype: str = "uint8"
    axes: str = "YX"
    shape: tuple[int, ...] = ()
    planes: int = 1
    icc: bytes | None = None
    exif: bytes | None = None
    tiff: dict = field(default_factory=dict)  # how to write the file back: imagej / ome metadata, resolution

    @property
    def is_stack(self) -> bool:
        return self.planes > 1


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_planes(path: str | os.PathLike, channels: int | None = None,
                max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file as float32 planes ``(N, C, H, W)`` (see the module's rules).

    Args:
        path: a PNG, JPEG, BMP or TIFF file.
        channels: 1 or 3 to convert (colour to gray by ITU-R 601 luma, gray to colour by
            repetition); None keeps the file's own.
        max_pixels: the most pixels the file may hold, all planes together (default
            :data:`MAX_PIXELS`).

    Raises:
        ImageReadError: with the file name, the reason, and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            raw, info, has_alpha = _read_tiff(path, limit)
        else:
            raw, info, has_alpha = _read_pillow(path, limit)
        planes, info.bits = _to_unit_float(raw, path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it; free memory or lower --max-pixels") from None
    except Exception as err:  # decoders raise many types; report them all the same way
        raise ImageReadError(f"{path}: cannot read as an image ({type(err).__name__}: {err})") from None
    # planes: (N, H, W, S), S = channels (+ 1 for alpha)
    if has_alpha:
        planes, info.alpha = planes[..., :-1], planes[..., -1]
    planes = np.moveaxis(planes, -1, 1)
    info.planes = planes.shape[0]
    if channels is not None:
        planes = convert_channels(planes, channels)
    return np.ascontiguousarray(planes, dtype=np.float32), info


def read_image(path: str | os.PathLike, channels: int | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read one image as float32 ``(C, H, W)``; a stack of several planes is refused (use :func:`read_planes`)."""
    planes, info = read_planes(path, channels, max_pixels)
    if info.is_stack:
        raise ImageReadError(f"{path}: a stack of {info.planes} planes (axes {info.axes}, shape {info.shape}); "
                             "expected one image")
    if info.alpha is not None:
        info.alpha = info.alpha[0]
    return planes[0], info


def _check_pixels(path: Path, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ImageReadError(f"{path}: {what} holds {count:,} pixels, more than the limit of {limit:,}; "
                             f"if the file is trusted, raise it with --max-pixels {count}")


def _read_pillow(path: Path, limit: int) -> tuple[np.ndarray, ImageInfo, bool]:
    """PNG, JPEG, BMP: ``(1, H, W, S)`` with S the channels (and alpha), the layout, and whether alpha is last."""
    from PIL import Image, ImageOps

    with open(path, "rb") as fh:
        head = fh.read(33)
    if needs_own_reader(head):
        data = path.read_bytes()
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        _check_pixels(path, width * height, limit, f"a {width} x {height} image")
        try:
            pixels, icc = read_png16(data)
        except PngError as err:
            raise ImageReadError(f"{path}: {err}") from None
        alpha = pixels.shape[-1] in (2, 4)
        info = ImageInfo(path, 16, pixels.shape[-1] - alpha, dtype="uint16", axes="YXS", shape=pixels.shape, icc=icc)
        return pixels[None], info, alpha
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the limit is ours, checked below from the header, for every format alike
    try:
        with Image.open(path) as im:
            width, height = im.size
            _check_pixels(path, width * height, limit, f"a {width} x {height} image")
            icc = im.info.get("icc_profile") or None
            im.load()
            im = ImageOps.exif_transpose(im)  # a phone photo the right way up; the orientation tag is dropped
            exif = im.getexif()
            exif_bytes = exif.tobytes() if len(exif) else None
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
                icc = None if mode == "CMYK" else icc  # a CMYK profile does not describe RGB pixels
            elif mode == "1":
                im = im.convert("L")
            elif mode == "La":
                im = im.convert("LA")
            elif mode == "RGBa":
                im = im.convert("RGBA")
            elif mode == "I" or mode.startswith("I;16"):
                pixels = np.asarray(im)
                if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 65535:
                    raise ImageReadError(f"{path}: 32-bit integer pixels outside 0-65535; save it as 16-bit")
                im = None
                array = pixels.astype(np.uint16)
            if im is not None:
                array = np.asarray(im)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    hws = array[..., None] if array.ndim == 2 else array
    alpha = hws.shape[-1] in (2, 4)
    info = ImageInfo(path, 8, hws.shape[-1] - alpha, dtype=str(array.dtype), axes="YXS" if array.ndim == 3 else "YX",
                     shape=array.shape, icc=icc, exif=exif_bytes)
    return hws[None], info, alpha


def _read_tiff(path: Path, limit: int) -> tuple[np.ndarray, ImageInfo, bool]:
    """A TIFF's image or stack as ``(N, H, W, S)``, its layout, and whether the last sample is alpha.

    Several series of one shape (pages written one by one) are stacked over a new axis ``I``.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        if not series:
            raise ImageReadError(f"{path}: no image in this TIFF")
        first = series[0]
        extra_axis = ""
        if len(series) > 1 and all(s.shape == first.shape and s.dtype == first.dtype for s in series):
            extra_axis = "I"  # pages written one by one, each its own series: a stack over them
        elif len(series) > 1:
            sizes = ", ".join(str(s.shape) for s in series[:4])
            raise ImageReadError(f"{path}: {len(series)} images of different shapes ({sizes}); expected one image "
                                 "or one stack of same-size planes")
        axes, shape = first.axes, tuple(first.shape)
        if extra_axis:
            axes, shape = extra_axis + axes, (len(series), *shape)
        count = int(np.prod([n for a, n in zip(axes, shape) if a != "S"], dtype=np.int64))
        _check_pixels(path, count, limit, f"a {' x '.join(map(str, shape))} ({axes}) array")
        if "Y" not in axes or "X" not in axes:
            raise ImageReadError(f"{path}: axes {axes!r} have no Y and X; expected a 2-D image or a stack of them")
        page = first.keyframe
        photometric = int(getattr(page, "photometric", 1))
        extrasamples = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        samples = shape[axes.index("S")] if "S" in axes else 1
        data = np.stack([s.asarray() for s in series]) if extra_axis else first.asarray()
        tiff = {"imagej": tif.imagej_metadata if tif.is_imagej else None,
                "ome": tif.ome_metadata if tif.is_ome else None,
                "resolution": _resolution(page), "photometric": photometric, "extrasamples": extrasamples}
        icc = page.tags["InterColorProfile"].value if "InterColorProfile" in page.tags else None
    if data.dtype.kind == "c" or data.dtype.fields is not None:
        raise ImageReadError(f"{path}: {data.dtype} pixels; expected 8/16-bit integers or float")
    is_rgb = photometric == 2 and samples in (3, 4)
    is_gray_alpha = photometric in (0, 1) and samples == 2 and len(extrasamples) == 1
    if photometric == 3:  # palette: tifffile gives the indices; the colours are in the colour map
        raise ImageReadError(f"{path}: a palette TIFF; save it as RGB or gray")
    # every axis but Y, X (and the samples of one RGB or gray+alpha pixel) counts planes
    colour_axis = "S" if (is_rgb or is_gray_alpha) else ""
    order = [i for i, a in enumerate(axes) if a not in SPATIAL_AXES + colour_axis] + \
            [axes.index("Y"), axes.index("X")] + ([axes.index("S")] if colour_axis else [])
    moved = np.transpose(data, order)
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    planes = moved.reshape(-1, height, width, samples if colour_axis else 1)
    if photometric == 0 and planes.dtype.kind in "ui":  # min-is-white: dark is high
        planes = np.iinfo(planes.dtype).max - planes
    alpha = is_gray_alpha or (is_rgb and samples == 4)
    info = ImageInfo(path, 8, 3 if is_rgb else 1, dtype=str(data.dtype), axes=axes, shape=shape,
                     icc=icc, tiff={**tiff, "order": order, "colour_axis": colour_axis, "pages": extra_axis})
    return planes, info, alpha


def _resolution(page) -> tuple | None:
    try:
        x, y = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y, unit)


def _to_unit_float(raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Pixels on a 0-1 scale and the bit depth to write them back at (8, 16; 32 for float)."""
    if raw.dtype == np.bool_:
        return raw.astype(np.float32), 8
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype.kind in "ui":
        low, high = int(raw.min(initial=0)), int(raw.max(initial=0))
        if low < 0 or high > 65535:
            raise ImageReadError(f"{path}: {raw.dtype} pixels from {low} to {high}; expected 8- or 16-bit values "
                                 "(0-255 or 0-65535): rescale the image and save it as 16-bit")
        return raw.astype(np.float32) / 65535.0, 16
    if raw.dtype.kind == "f":
        x = raw.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            plane, row, column = (int(i) for i in np.argwhere(bad)[0][:3])  # raw is (N, H, W, S)
            at = f"row {row}, column {column}" + (f" of plane {plane}" if raw.shape[0] > 1 else "")
            raise ImageReadError(f"{path}: {int(bad.sum())} NaN or infinite pixels (the first at {at}); replace "
                                 "them (by interpolation, or by 0 in a masked region) before denoising")
        low, high = float(x.min(initial=0)), float(x.max(initial=0))
        if low < FLOAT_RANGE[0] or high > FLOAT_RANGE[1]:
            hint = "divide by 255" if high <= 255 * FLOAT_RANGE[1] else "divide by its maximum"
            raise ImageReadError(f"{path}: float pixels from {low:g} to {high:g}; dbsn reads float images on a 0-1 "
                                 f"scale (noisy ones may stray to {FLOAT_RANGE[0]:g}..{FLOAT_RANGE[1]:g}): {hint} "
                                 "first, or save it as 8- or 16-bit integers")
        return x, 32
    raise ImageReadError(f"{path}: unsupported pixel type {raw.dtype}; expected 8/16-bit integers or float in [0, 1]")


def convert_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(C, H, W)`` or planes ``(N, C, H, W)`` to 1 or 3 channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    axis = array.ndim - 3
    c = array.shape[axis]
    if c == channels:
        return array
    if channels == 1:
        r, g, b = (np.take(array, i, axis=axis) for i in range(3))
        return np.expand_dims(0.299 * r + 0.587 * g + 0.114 * b, axis).astype(np.float32)
    return np.repeat(array, 3, axis=axis)


def output_suffix(path: Path) -> str:
    """The suffix to write a result of ``path`` with: TIFF stays TIFF (float data and stacks
    only come in TIFF), PNG stays PNG, JPEG and BMP become PNG (no second lossy step)."""
    return path.suffix if path.suffix.lower() in TIFF_SUFFIXES else ".png"


def noise_map_layout(info: ImageInfo) -> ImageInfo:
    """How to write a noise map ``(N, 1, H, W)`` of the image ``info`` describes: float32, one
    gray plane per plane of the image, in the image's stack layout."""
    layout = ImageInfo(info.path, 32, 1, dtype="float32", axes=info.axes, shape=info.shape, planes=info.planes)
    if not info.tiff.get("order"):
        return layout
    axes, shape = info.axes, list(info.shape)
    if info.tiff["colour_axis"]:  # the samples of a colour or gray+alpha pixel become one value
        del shape[axes.index("S")]
        axes = axes.replace("S", "")
    order = [i for i, a in enumerate(axes) if a not in SPATIAL_AXES] + [axes.index("Y"), axes.index("X")]
    layout.axes, layout.shape = axes, tuple(shape)
    layout.tiff = {**info.tiff, "order": order, "colour_axis": "", "photometric": 1, "imagej": None
                   if info.tiff.get("imagej") is None else {}, "extrasamples": ()}
    return layout


def quantise(array: np.ndarray, bits: int, dtype: str | None = None) -> np.ndarray:
    """Float ``(..., C, H, W)`` to ``(..., H, W[, C])`` of the given bit depth (and integer or float dtype).

    8 and 16 bits clip to [0, 1]; 32 bits (float) keep the values as they are (a noise map
    in 0-255 units, a noisy image that was never clipped).
    """
    if bits != 32:
        array = np.clip(array, 0.0, 1.0)
    hwc = np.moveaxis(array, -3, -1)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if bits == 8:
        pixels = np.round(hwc * 255.0).astype(np.uint8)
    elif bits == 16:
        pixels = np.round(hwc * 65535.0).astype(np.uint16)
    else:
        pixels = hwc.astype(np.float32)
    if dtype is not None and dtype != str(pixels.dtype):
        pixels = pixels.astype(np.uint8 if dtype == "bool" else dtype)
    return pixels


def write_image(path: str | os.PathLike, array: np.ndarray, bits: int = 8, alpha: np.ndarray | None = None,
                like: ImageInfo | None = None) -> Path:
    """Write float ``(C, H, W)`` (or planes ``(N, C, H, W)`` of a stack) to ``path`` atomically.

    Args:
        bits: 8, 16, or 32 for float TIFF (see :func:`quantise`); ignored with ``like``.
        alpha: ``(H, W)`` (or ``(N, H, W)``) in [0, 1], appended as the last channel.
        like: the :class:`ImageInfo` of the input: the output gets its dtype, axes, alpha,
            ICC profile, EXIF data and TIFF metadata.
    """
    path = Path(path)
    planes = array[None] if array.ndim == 3 else array
    if like is not None:
        bits, alpha = like.bits, like.alpha if alpha is None else alpha
    if alpha is not None:
        planes = np.concatenate([planes, alpha.reshape(planes.shape[0], 1, *planes.shape[-2:])], axis=1)
    dtype = like.dtype if like is not None else None
    pixels = quantise(planes, bits, dtype)
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES and suffix != ".png":
        raise ValueError(f"{path}: cannot write {suffix!r}; use .png or .tif")
    if suffix == ".png" and (pixels.shape[0] > 1 or pixels.dtype.kind == "f"):
        raise ValueError(f"{path}: a stack or float data is written as TIFF; use a .tif name")
    with atomic_path(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            _write_tiff(tmp, pixels, planes.shape[1], alpha is not None, like)
        else:
            _write_png(tmp, pixels[0], like)
    return path


def _write_png(tmp: Path, pixels: np.ndarray, like: ImageInfo | None) -> None:
    icc = like.icc if like is not None else None
    if pixels.dtype == np.uint16 and pixels.ndim == 3:  # 16-bit with 2-4 channels: Pillow writes only 8 bits
        tmp.write_bytes(write_png16(pixels, icc))
        return
    from PIL import Image

    im = Image.fromarray(pixels.astype("<u2") if pixels.dtype == np.uint16 else pixels.astype(np.uint8))
    extra = {"icc_profile": icc} if icc else {}
    if like is not None and like.exif:
        extra["exif"] = like.exif
    im.save(tmp, format="PNG", **extra)


def _write_tiff(tmp: Path, pixels: np.ndarray, samples: int, has_alpha: bool, like: ImageInfo | None) -> None:
    """``pixels`` ``(N, H, W[, S])`` as a TIFF: a plain image, or the stack ``like`` describes, axes and all."""
    import tifffile

    colour = samples >= 3
    tiff = like.tiff if like is not None else {}
    gray = "miniswhite" if tiff.get("photometric") == 0 else "minisblack"
    options: dict = {"photometric": "rgb" if colour else gray}
    if pixels.ndim == 4:
        options["planarconfig"] = "contig"
        if has_alpha:
            options["extrasamples"] = (2,)  # unassociated alpha
    if like is not None and like.icc:
        options["iccprofile"] = like.icc
    if tiff.get("resolution"):
        x, y, unit = tiff["resolution"]
        options["resolution"], options["resolutionunit"] = (x, y), unit
    if like is None or not like.tiff.get("order"):
        data = pixels[0] if pixels.shape[0] == 1 else pixels
        if pixels.shape[0] > 1:
            options["metadata"] = {"axes": "QYXS"[: data.ndim] if data.ndim == 4 else "QYX"}
        tifffile.imwrite(tmp, data, **options)
        return
    data = _restore_layout(pixels, like)
    axes = like.axes
    if tiff.get("pages"):  # one page per series, as the file came
        with tifffile.TiffWriter(tmp) as writer:
            for part in data:
                writer.write(part, metadata={"axes": axes[1:]}, **options)
    elif tiff.get("imagej") is not None:
        kept = {k: v for k, v in tiff["imagej"].items()
                if k not in ("ImageJ", "images", "channels", "slices", "frames", "hyperstack", "axes")}
        tifffile.imwrite(tmp, data, imagej=True, metadata={**kept, "axes": axes}, **options)
    elif tiff.get("ome") is not None:
        tifffile.imwrite(tmp, data, ome=True, metadata={"axes": axes, **_ome_sizes(tiff["ome"])}, **options)
    else:
        tifffile.imwrite(tmp, data, metadata={"axes": axes}, **options)
    with tifffile.TiffFile(tmp) as written:  # a stack read back otherwise would be a wrong result: refuse it
        shapes = [s.shape for s in written.series]
        got = (len(shapes), *shapes[0]) if tiff.get("pages") else shapes[0]
        got_axes = ("I" if tiff.get("pages") else "") + written.series[0].axes
    if tuple(got) != tuple(like.shape) or got_axes != axes:
        raise ValueError(f"{like.path}: its {axes} stack of shape {like.shape} would be read back as {got_axes} "
                         f"{tuple(got)} in this TIFF layout; save the input as a plain multi-page TIFF")


def _restore_layout(pixels: np.ndarray, like: ImageInfo) -> np.ndarray:
    """Planes ``(N, H, W[, S])`` back to the file's own array shape and axis order."""
    order, colour_axis = like.tiff["order"], like.tiff["colour_axis"]
    moved_shape = [like.shape[i] for i in order]
    if not colour_axis:
        pixels = pixels.reshape(pixels.shape[:3])  # (N, H, W)
    data = pixels.reshape(moved_shape)
    if like.tiff.get("photometric") == 0 and data.dtype.kind in "ui":
        data = np.iinfo(data.dtype).max - data
    return np.transpose(data, np.argsort(order))


def _ome_sizes(ome_xml: str) -> dict:
    """The physical pixel sizes and time step of an OME-XML description, as tifffile takes them."""
    import re

    pixels = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", ome_xml or "")
    if not pixels:
        return {}
    keys = ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeZ", "PhysicalSizeXUnit", "PhysicalSizeYUnit",
            "PhysicalSizeZUnit", "TimeIncrement", "TimeIncrementUnit")
    found = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(1)))
    out = {}
    for key in keys:
        if key in found:
            try:
                out[key] = float(found[key]) if not key.endswith("Unit") else found[key]
            except ValueError:
                pass
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMPORARY_MARK = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what :func:`atomic_path` left beside ``path`` when a process was killed while writing it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(f".{path.name}.*{TEMPORARY_MARK}{path.suffix}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class FileIndex:
    """Files to look paths up against by identity, also on file systems that fold case (macOS, Windows).

    A path is found when it is one of the files (by device and inode, so links count), or
    when its name, case-folded, is one of theirs in the same folder: on a case-sensitive
    system that refuses a few names needlessly, and never replaces an input. Each lookup
    costs a stat or two, whatever the number of files.
    """

    def __init__(self, paths):
        self._inodes: dict[tuple[int, int], Path] = {}
        self._names: dict[tuple[str, str], Path] = {}
        for p in map(Path, paths):
            try:
                st = p.stat()
            except OSError:
                continue  # a file that does not exist holds nothing to lose
            self._inodes.setdefault((st.st_dev, st.st_ino), p)
            self._names.setdefault(self._name_key(p), p)

    @staticmethod
    def _name_key(path: Path) -> tuple[str, str]:
        return os.path.normcase(str(path.parent.resolve())), path.name.casefold()

    def find(self, path: str | os.PathLike) -> Path | None:
        """The indexed file that ``path`` names, or None."""
        path = Path(path)
        try:
            st = path.stat()
            if (st.st_dev, st.st_ino) in self._inodes:
                return self._inodes[(st.st_dev, st.st_ino)]
        except OSError:
            pass
        return self._names.get(self._name_key(path))


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (see :class:`FileIndex`)."""
    return FileIndex([b]).find(a) is not None


__all__ = ["FLOAT_RANGE", "IMAGE_SUFFIXES", "FileIndex", "ImageInfo", "ImageReadError", "MAX_PIXELS", "atomic_path",
           "convert_channels", "list_images", "noise_map_layout", "output_suffix", "quantise", "read_image",
           "read_planes", "remove_stale_temporaries", "same_file", "write_image"]
