"""The quality report a stage-1 run writes beside its weights, for users without clean images.

The trained model denoises a few of the run's own noisy images (those held out for validation, else
training ones; a central crop of at most ``REPORT_SIDE`` pixels a side) exactly as ``dbsn denoise``
would. ``report.json`` gets, per image, what the model took out (:func:`dbsn.noise.diagnosis.residual_report`:
the residual's level, its correlation at small lags, whether it follows the edges) beside the noise
level the model estimates, and the run's last validation NLL. ``report.png`` shows, per image, the
noisy crop, the denoised one, the residual (amplified about mid-grey) and the estimated noise std map
(mid-grey: its mean).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_path
from ..denoiser import Denoiser
from ..figure import before_after
from ..hub import load_model
from ..nn.blind_spot import std_n_map
from ..noise.diagnosis import STRUCTURE, residual_report

REPORT_IMAGES = 4
REPORT_SIDE = 512
RESIDUAL_GAIN = 4.0  # the residual is drawn as 0.5 + gain (y - x_hat)
LEVEL_RATIO = 2.0  # residual std against the estimated noise std beyond which the verdict warns


def _crop(chw: np.ndarray, side: int = REPORT_SIDE) -> np.ndarray:
    h, w = chw.shape[1:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return chw[:, top:top + side, left:left + side]


def quality_report(weights: str | Path, images: list[tuple[str, np.ndarray]], out_dir: str | Path,
                   last_validation: dict | None = None, device: str | torch.device = "cpu") -> dict:
    """Denoise ``images`` (``(name, (C, H, W) float array in [0, 1])``) with the weights at ``weights`` and
    write ``report.json`` and ``report.png`` into ``out_dir``; returns the report's summary."""
    denoiser = Denoiser(load_model(str(weights)), device=device)
    rows, panels, captions = [], [], []
    for name, image in images[:REPORT_IMAGES]:
        y = np.ascontiguousarray(_crop(np.asarray(image, dtype=np.float32)))
        out = denoiser.predict(torch.from_numpy(y)[None])
        x_hat = out["x_hat"][0].numpy()
        std = std_n_map(out)[0].numpy()
        entry = {"image": name, **residual_report(y, x_hat), "noise_std_est": float(std.mean())}
        rows.append(entry)
        std_panel = np.clip(0.5 * std / max(float(std.mean()), 1e-6), 0, 1)[None]  # mid-grey: the mean level
        panels.append([y, x_hat, np.clip(0.5 + RESIDUAL_GAIN * (y - x_hat), 0, 1).mean(0, keepdims=True), std_panel])
        captions += [Path(name).name[:40], f"residual std {entry['residual_std']:.2f}",
                     f"rho1 {entry['rho1']:+.2f}, edges {entry['structure']:+.2f}",
                     f"std {float(std.min()):.1f}..{float(std.max()):.1f}"]
    summary = {
        "images": len(rows),
        "residual_std": statistics.median(r["residual_std"] for r in rows),
        "noise_std_est": statistics.median(r["noise_std_est"] for r in rows),
        "rho1": statistics.median(r["rho1"] for r in rows),
        "structure": max(r["structure"] for r in rows),
        "val_nll": (last_validation or {}).get("val_nll"),
    }
    ratio = summary["residual_std"] / max(summary["noise_std_est"], 1e-6)
    if summary["structure"] > STRUCTURE:
        verdict = (f"on {sum(r['structure'] > STRUCTURE for r in rows)} of {len(rows)} images the residual follows "
                   "the edges: the model removed detail too (train longer, or try another --noise-model)")
    elif not 1 / LEVEL_RATIO <= ratio <= LEVEL_RATIO:
        verdict = (f"the model took out {ratio:.2f}x the noise level it estimates ({summary['residual_std']:.2f} "
                   f"against {summary['noise_std_est']:.2f}): it is not yet trained enough, or the noise does not "
                   "fit its noise model (`dbsn inspect` shows the noise)")
    else:
        verdict = "the residual does not follow the edges and is at the estimated noise level: noise removed, detail kept"
    summary["verdict"] = verdict
    out = Path(out_dir)
    before_after(panels, ["noisy", "denoised", f"residual x{RESIDUAL_GAIN:g}", "noise std (estimate)"],
                 out / "report.png", captions)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "images": rows}, indent=2))
    return summary
