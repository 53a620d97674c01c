"""The quick-start job: denoise the bundled demo images with the bundled default models.

The demo images are four 192 x 192 crops of BSD68 and CBSD68 test photographs (two
gray, two colour) with Gaussian noise of std 25 added and saved as 8-bit PNG, as a
camera would store them. None of them was seen in training. Their clean versions ship
beside them, only to print PSNR.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

from .data.io import list_images, read_image
from .figure import before_after
from .files import DefaultDenoisers, denoise_files
from .metrics import psnr
from .hub import default_names

log = logging.getLogger("dbsn")


def demo_folder() -> Path:
    return Path(str(resources.files("dbsn") / "demo_data"))


def run_demo(out_dir: str, progress_bar: bool = True, device: str = "auto") -> int:
    """Denoise the bundled noisy images with the default model for their channels; print PSNR.

    Writes ``out_dir/denoised/`` and ``out_dir/before_after.png``. Returns the exit code.
    """
    data = demo_folder()
    out = Path(out_dir)
    defaults = default_names()
    if not defaults:
        raise ValueError("no bundled default model is installed (see `dbsn list`); the demo needs one")
    kinds = {"1": "gray", "3": "colour"}
    print("default models: " + ", ".join(f"{kinds.get(c, c)} -> {n}" for c, n in sorted(defaults.items())))
    inputs, missing = [], []
    for path in list_images(data / "noisy"):
        channels = str(read_image(path)[1].channels)
        (inputs if channels in defaults else missing).append(path)
    if missing:
        print(f"no bundled default model for {', '.join(p.name for p in missing)} (see `dbsn list`): skipped")
    result = denoise_files(DefaultDenoisers(device=device), inputs, out / "denoised", progress_bar=progress_bar)
    print(f"{'image':<20}{'noisy PSNR':>12}{'denoised PSNR':>15}")
    before, after, panels, captions = [], [], [], []
    for path in result.written:
        x = torch.from_numpy(read_image(data / "clean" / path.name)[0])
        y = torch.from_numpy(read_image(data / "noisy" / path.name)[0])
        x_hat = torch.from_numpy(read_image(path)[0])
        before.append(psnr(y, x))
        after.append(psnr(x_hat, x))
        print(f"{path.name:<20}{before[-1]:>12.2f}{after[-1]:>15.2f}")
        panels.append([y.numpy(), x_hat.numpy(), x.numpy()])
        captions += [f"{before[-1]:.2f} dB", f"{after[-1]:.2f} dB", path.name]
    if before:
        print(f"{'mean':<20}{sum(before) / len(before):>12.2f}{sum(after) / len(after):>15.2f}")
    print(f"denoised images written to {out / 'denoised'}")
    if panels:
        figure = before_after(panels, ["noisy", "denoised", "clean"], out / "before_after.png", captions)
        print(f"before/after figure written to {figure}")
    return 1 if result.failed else 0
