"""The evaluation protocol (METHOD.md section 5) on a folder of clean images, and its table."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from .data.io import list_images, read_image
from .denoiser import Denoiser, match_channels
from .metrics import psnr, ssim
from .nn.blind_spot import std_n_map
from .noise import parse_noise

log = logging.getLogger("dbsn")


def evaluate(
    denoiser: Denoiser,
    clean_dir: str | os.PathLike,
    noise_spec: str,
    seed: int = 0,
    progress_bar: bool = False,
    channels: int | None = None,
    max_pixels: int | None = None,
) -> dict:
    """The paper's evaluation protocol (METHOD.md section 5) on a folder of clean images.

    An image whose channels differ from the model's is skipped and reported, as
    :func:`denoise_files` does, unless ``channels`` (1 or 3) asks to convert every image.

    For every image: ``numpy.random.seed(seed)``, noise added to the float32 image,
    the noisy image neither clipped nor quantised, the output clamped to [0, 1], and
    PSNR on floats with data range 1 (SSIM likewise), averaged over images.
    """
    from tqdm import tqdm

    noise = parse_noise(noise_spec)
    if getattr(noise, "std_max", None) is not None:
        raise ValueError(f"evaluation needs one noise level, not a range: got {noise_spec!r}")
    paths = list_images(clean_dir)
    if not paths:
        raise ValueError(f"no images in {str(clean_dir)!r}")
    rows, skipped = [], []
    for path in tqdm(paths, disable=not progress_bar, unit="img"):
        try:
            x, _ = read_image(path, channels=channels, max_pixels=max_pixels)
            x = torch.from_numpy(match_channels(x, denoiser.channels, str(path)))
        except ValueError as err:  # ImageReadError too
            log.error("skipped: %s", err)
            skipped.append(str(path))
            continue
        y = noise.add_protocol(x, seed=seed)
        start = time.perf_counter()
        out = denoiser.predict(y[None])
        seconds = time.perf_counter() - start
        row = {
            "image": path.name,
            "psnr_noisy": psnr(y, x),
            "psnr_mu": psnr(out["mu"][0].clamp(0, 1), x) if "mu" in out else None,
            "psnr": psnr(out["x_hat"][0], x),
            "ssim": ssim(out["x_hat"][0], x),
            "noise_std_est": std_n_map(out).mean().item() if "var_n" in out else None,
            "seconds": seconds,
        }
        rows.append(row)
    if not rows:
        raise ValueError(f"no readable images in {str(clean_dir)!r}")

    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "protocol": f"seed {seed} per image, noise {noise.spec}, noisy input not clipped or quantised, "
        "output clamped to [0, 1], float PSNR/SSIM with data range 1, mean over images",
        "noise": noise.spec,
        "clean": str(clean_dir),
        "model": denoiser.config,
        "n_images": len(rows),
        "skipped": skipped,
        "psnr_noisy": mean("psnr_noisy"),
        "psnr_mu": mean("psnr_mu"),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "noise_std_est": mean("noise_std_est"),
        "seconds_per_image_median": float(np.median([r["seconds"] for r in rows])),
        "images": rows,
    }


def format_table(result: dict) -> str:
    """One line per image and the mean, as ``dbsn evaluate`` prints it."""

    def cell(v, fmt):
        return format(v, fmt) if v is not None else "-"

    header = f"{'image':<24} {'noisy':>7} {'mu':>7} {'x_hat':>7} {'ssim':>6} {'std_n':>6}"
    lines = [header, "-" * len(header)]
    for r in result["images"] + [{"image": "mean", **{k: result[k] for k in
                                   ("psnr_noisy", "psnr_mu", "psnr", "ssim", "noise_std_est")}}]:
        if r["image"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{r['image'][:24]:<24} {cell(r['psnr_noisy'], '7.2f')} {cell(r['psnr_mu'], '7.2f')} "
            f"{cell(r['psnr'], '7.2f')} {cell(r['ssim'], '6.4f')} {cell(r['noise_std_est'], '6.2f')}"
        )
    return "\n".join(lines)
