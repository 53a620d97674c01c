"""Tiled inference: any image size within a memory budget, with the same result as one pass.

Every model here is a stack of convolutions with a finite receptive field: output
pixel p depends only on input pixels within ``radius`` of p. So the image is cut
into core tiles; each core is run with ``radius`` pixels of context on every side
(clipped at the image border, where the model pads exactly as it does for the
whole image) and only the core of the result is kept. Tile origins are multiples
of the model's ``align`` (its downsampling factor), so wavelet and stride grids
line up with those of the whole image.

Image-wide averages (the AWGN and MG noise levels) are not computed per tile: the
stage-1 model returns per-pixel (co)variances from each tile, and the averaging
and the fusion run once on the stitched maps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .runtime import available_memory

DEFAULT_MAX_MEMORY = 1 << 30  # bytes of working memory where the system does not say how much is available
MEMORY_SHARE, MEMORY_FLOOR, MEMORY_CAP = 4, 256 << 20, 8 << 30  # the default budget: a quarter, within these

log = logging.getLogger("dbsn")


def default_max_memory() -> int:
    """The default working memory of one pass: a quarter of the memory available now, from
    256 MiB to 8 GiB (1 GiB where the system does not say)."""
    free = available_memory()
    if free is None:
        return DEFAULT_MAX_MEMORY
    return int(min(max(free // MEMORY_SHARE, MEMORY_FLOOR), MEMORY_CAP))


@dataclass(frozen=True)
class TileSpec:
    """What tiling needs from a model: context radius, grid alignment and memory per pixel."""

    radius: int
    align: int = 1
    bytes_per_pixel: int = 4096


# bf16 and fp16 activations take half the bytes of fp32 ones, but not everything in a pass is an
# activation of the network: the peaks of one pass measured in bf16 were 0.24 to 0.8 of those in
# fp32 over the registered architectures (tests/test_memory.py), so a half-precision pass is
# budgeted at three quarters of the fp32 figure
HALF_PRECISION_SHARE = 0.75


def spec_for_precision(spec: TileSpec, precision: str) -> TileSpec:
    """``spec`` with the memory per pixel of a pass under ``precision`` autocast ("fp32", "bf16", "fp16")."""
    if precision == "fp32":
        return spec
    return replace(spec, bytes_per_pixel=math.ceil(spec.bytes_per_pixel * HALF_PRECISION_SHARE))


def pad_reflect(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Pad the last two dimensions at the bottom and right by reflection (the edge pixel not repeated).

    Reflection keeps the noise in the padding looking like noise; repeated edge rows
    make a strip of equal values no network saw in training. A dimension too short to
    reflect fully (fewer pixels than its padding) repeats its first pixel after the
    reflection. The indices are arithmetic, with no branch on the size, so an ONNX
    export keeps height and width dynamic.
    """
    h, w = x.shape[-2:]
    return x.index_select(-2, _reflected(h, bottom, x.device)).index_select(-1, _reflected(w, right, x.device))


def _reflected(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices ``0 .. n - 1`` then ``n - 2, n - 3, ...`` (``pad`` of them), floored at 0."""
    j = torch.arange(n + pad, device=device)
    return ((n - 1) - ((n - 1) - j).abs()).clamp_min(0)


def parse_memory(text: str | int | float | None) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GB"`` or a number of bytes, as bytes; None (or ``"auto"``) for
    :func:`default_max_memory`."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return default_max_memory()
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        s = text.strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
        try:
            value = int(float(s[:-1] if scale != 1 else s) * scale)
        except (ValueError, OverflowError):  # "nan", "inf"
            raise ValueError(f"memory must look like 512M or 2G, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"memory must be positive, got {text!r}")
    return value


def tile_size(spec: TileSpec, max_memory: int, channels_batch: int = 1) -> int:
    """The side of the largest square window (core plus context) that fits ``max_memory``."""
    side = int(math.sqrt(max_memory / (spec.bytes_per_pixel * channels_batch)))
    core = side - 2 * spec.radius
    core = max(core - core % spec.align, spec.align)
    return core


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align


_WARNED: set = set()


# On a CPU a window of more pixels than this measured slower per pixel, not faster (12-megapixel
# mosaics, 2-core Xeon, benchmarks/one_pass.py): gray 13.8 s with 6-megapixel windows, 11.0 s with
# 2.7, 12.5 s with 1.3; colour 82.6 s with 4.9, 68.5 s with 2.3, 75.5 s with 1.3. Fresh memory
# for each layer's output of a large window costs more than the context a smaller one repeats.
WINDOW_PIXELS = 5 << 19  # 2.6 million


def plan_tiles(h: int, w: int, spec: TileSpec, max_memory: int, batch: int = 1,
               most_pixels: int | None = None) -> tuple[int, int] | None:
    """The core height and width that cover an ``h x w`` image with the least summed window area
    (core plus context), every window within ``max_memory`` and of at most ``most_pixels`` pixels;
    None when one pass fits.

    Tries every number of tile rows; for each, the widest core the budget allows, then the
    columns balanced so that no tile is a thin remainder. Cores need not be square: a wide
    image under a tight budget gets wide, short tiles, whose context costs less.
    """
    if h * w * batch * spec.bytes_per_pixel <= max_memory and (most_pixels is None or h * w <= most_pixels):
        return None
    pixels = max_memory // (batch * spec.bytes_per_pixel)  # the most window pixels the budget holds
    if most_pixels is not None:
        pixels = min(pixels, most_pixels)
    best: tuple[int, tuple[int, int]] | None = None
    # cores far thinner than the context or the budget's side are never the cheapest: not tried
    thinnest = max(spec.align, min(spec.radius, int(math.sqrt(pixels)) // 4))
    for rows in range(1, -(-h // thinnest) + 1):
        core_h = _align_up(-(-h // rows), spec.align)
        if best is not None and core_h == best[1][0]:
            continue
        tallest = _longest_window(h, core_h, spec)
        core_w = _widest_core(w, pixels // tallest, spec)
        if core_w is None:
            continue  # windows this tall leave no width: try more rows of shorter tiles
        cols = -(-w // core_w)
        core_w = _align_up(-(-w // cols), spec.align)  # balanced columns: no thin remainder
        area = _window_area(h, core_h, spec) * _window_area(w, core_w, spec)
        if best is None or area < best[0]:
            best = (area, (core_h, core_w))
    if best is None:  # the budget holds no window of one aligned block with its context
        core = spec.align
        best = (0, (core, core))
    core_h, core_w = best[1]
    if min(core_h, core_w) < 2 * spec.radius and (max_memory, spec) not in _WARNED:
        _WARNED.add((max_memory, spec))  # once per budget and model, not once per image
        side = 4 * spec.radius + spec.align
        enough = side * side * batch * spec.bytes_per_pixel
        log.warning("--max-memory %.3gG gives tiles of %d x %d pixels inside %d pixels of context on each side: "
                    "most of the work is context; --max-memory %.2gG would give tiles twice the context",
                    max_memory / 2**30, core_h, core_w, spec.radius, enough / 2**30)
    return core_h, core_w


def _longest_window(length: int, core: int, spec: TileSpec) -> int:
    return max(end - start for start, end, _, _ in _windows(length, core, spec.radius, spec.align))


def _widest_core(length: int, most: int, spec: TileSpec) -> int | None:
    """The widest aligned core whose windows along ``length`` are at most ``most`` long (None: none is)."""
    if _longest_window(length, spec.align, spec) > most:
        return None
    low, high = 1, -(-length // spec.align)  # in aligned blocks; window length grows with the core
    while low < high:
        mid = (low + high + 1) // 2
        if _longest_window(length, mid * spec.align, spec) <= most:
            low = mid
        else:
            high = mid - 1
    return low * spec.align


def _window_area(length: int, core: int, spec: TileSpec) -> int:
    """The summed lengths of the windows along one axis."""
    return sum(end - start for start, end, _, _ in _windows(length, core, spec.radius, spec.align))


def _windows(length: int, core: int, radius: int, align: int) -> list[tuple[int, int, int, int]]:
    """Per tile: (window start, window end, core start, core end) along one axis."""
    out = []
    for a in range(0, length, core):
        b = min(a + core, length)
        start = max(a - radius, 0)
        start -= start % align  # grid of the whole image
        end = min(b + radius, length)
        out.append((start, end, a, b))
    return out


def tiled_apply(
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    y: torch.Tensor,
    spec: TileSpec,
    max_memory: int | None = None,
    most_pixels: int | None = None,
) -> dict[str, torch.Tensor]:
    """Apply ``fn`` to ``y`` ``(B, C, H, W)`` tile by tile and stitch its per-pixel outputs.

    ``fn`` returns tensors whose last two dimensions are the window's ``H, W``. When the
    whole image fits the budget (default :func:`default_max_memory`) and ``most_pixels``,
    ``fn(y)`` is returned as it is; otherwise the tiles are those of :func:`plan_tiles`.
    """
    h, w = y.shape[-2:]
    plan = plan_tiles(h, w, spec, parse_memory(max_memory), y.shape[0], most_pixels)
    if plan is None:
        return fn(y)
    core_h, core_w = plan
    out: dict[str, torch.Tensor] = {}
    for r0, r1, a0, a1 in _windows(h, core_h, spec.radius, spec.align):
        for c0, c1, b0, b1 in _windows(w, core_w, spec.radius, spec.align):
            part = fn(y[..., r0:r1, c0:c1])
            for key, value in part.items():
                if key not in out:
                    out[key] = value.new_empty(*value.shape[:-2], h, w)
                out[key][..., a0:a1, b0:b1] = value[..., a0 - r0:a1 - r0, b0 - c0:b1 - c0]
    return out
