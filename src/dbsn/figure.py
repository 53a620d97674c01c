"""A before/after figure as a PNG, drawn with Pillow alone (no plotting library)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .data.io import atomic_path

GAP = 4
LABEL_HEIGHT = 14


def _to_pil(chw: np.ndarray) -> Image.Image:
    """A ``(C, H, W)`` float array in [0, 1] (C = 1 or 3) as an 8-bit RGB image."""
    chw = np.asarray(chw, dtype=np.float32)
    if chw.ndim != 3 or chw.shape[0] not in (1, 3):
        raise ValueError(f"expected an array (1 or 3, H, W), got {chw.shape}")
    rgb = np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw
    return Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0))


def before_after(
    rows: list[list[np.ndarray]], titles: list[str], path: str | os.PathLike, captions: list[str] | None = None
) -> Path:
    """Write a grid of images, one row per image and one column per version, to ``path`` (PNG).

    Args:
        rows: per row, the panels ``(C, H, W)`` in [0, 1], e.g. ``[noisy, denoised, clean]``.
        titles: one title per column, drawn above the first row.
        captions: optional text under each row's panels, one string per panel, row after row.
    """
    if not rows or any(len(r) != len(titles) for r in rows):
        raise ValueError("every row needs one panel per title")
    panels = [[_to_pil(a) for a in row] for row in rows]
    col_w = [max(p[j].width for p in panels) for j in range(len(titles))]
    row_h = [max(p.height for p in row) + LABEL_HEIGHT for row in panels]
    width = sum(col_w) + GAP * (len(titles) + 1)
    height = LABEL_HEIGHT + sum(row_h) + GAP * (len(rows) + 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for j, title in enumerate(titles):
        draw.text((x, 1), title, fill="black")
        x += col_w[j] + GAP
    y = LABEL_HEIGHT + GAP
    for i, row in enumerate(panels):
        x = GAP
        for j, panel in enumerate(row):
            canvas.paste(panel, (x, y))
            if captions is not None:
                draw.text((x, y + panel.height + 1), captions[i * len(titles) + j], fill="black")
            x += col_w[j] + GAP
        y += row_h[i] + GAP
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
