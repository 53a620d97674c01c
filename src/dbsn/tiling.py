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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DEFAULT_MAX_MEMORY = 1 << 30  # bytes of working memory for one tile


@dataclass(frozen=True)
class TileSpec:
    """What tiling needs from a model: context radius, grid alignment and memory per pixel."""

    radius: int
    align: int = 1
    bytes_per_pixel: int = 4096


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


def parse_memory(text: str | int | float) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GB"`` or a number of bytes, as bytes."""
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
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> dict[str, torch.Tensor]:
    """Apply ``fn`` to ``y`` ``(B, C, H, W)`` tile by tile and stitch its per-pixel outputs.

    ``fn`` returns tensors whose last two dimensions are the window's ``H, W``. When the
    whole image fits the budget, ``fn(y)`` is returned as it is.
    """
    h, w = y.shape[-2:]
    if h * w * y.shape[0] * spec.bytes_per_pixel <= max_memory:
        return fn(y)
    core = tile_size(spec, max_memory, y.shape[0])
    out: dict[str, torch.Tensor] = {}
    for r0, r1, a0, a1 in _windows(h, core, spec.radius, spec.align):
        for c0, c1, b0, b1 in _windows(w, core, spec.radius, spec.align):
            part = fn(y[..., r0:r1, c0:c1])
            for key, value in part.items():
                if key not in out:
                    out[key] = value.new_empty(*value.shape[:-2], h, w)
                out[key][..., a0:a1, b0:b1] = value[..., a0 - r0:a1 - r0, b0 - c0:b1 - c0]
    return out
