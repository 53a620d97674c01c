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


def noise_figure(diagnosis, path: str | os.PathLike, cell: int = 24) -> Path:
    """Draw a noise diagnosis (:class:`dbsn.noise.diagnosis.Diagnosis`) to ``path`` (PNG): the
    autocorrelation of the noise over lags (0..L, 0..L) as a grey map (white: 1, black: 0 or less), and
    the noise std against the intensity, one dot per intensity bin."""
    rho = np.clip(np.asarray(diagnosis.rho, dtype=np.float32), 0, 1)
    lags = rho.shape[0]
    side = lags * cell
    plot_w, plot_h, margin = 260, side, 30
    image = Image.new("RGB", (side + plot_w + 3 * margin, side + 2 * LABEL_HEIGHT + margin), "white")
    draw = ImageDraw.Draw(image)
    top = LABEL_HEIGHT + 4
    draw.text((margin, 2), f"noise autocorrelation, lags 0..{lags - 1} (corr. length {diagnosis.correlation_length})",
              fill="black")
    for dy in range(lags):
        for dx in range(lags):
            v = int(round(255 * rho[dy, dx]))
            x0, y0 = margin + dx * cell, top + dy * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(v, v, v))
            draw.text((x0 + 2, y0 + cell // 3), f"{diagnosis.rho[dy][dx]:.2f}"[:4], fill="red")
    left = 2 * margin + side
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    xs, ss = diagnosis.bin_intensity, diagnosis.bin_std
    s_max = max(max(ss, default=1.0), 1e-6) * 1.2
    for x, s in zip(xs, ss):
        px, py = left + x * plot_w, top + plot_h - s / s_max * plot_h
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill="blue")
    draw.text((left, top + plot_h + 2), f"intensity 0..1; std up to {s_max:.1f} (0-255); "
              f"x{diagnosis.signal_ratio:.2f} dark to bright", fill="black")
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
