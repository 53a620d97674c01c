"""The quick-start job: learn a denoiser from the bundled noisy images alone, then denoise them.

The bundled images are four 160 x 160 gray crops (BSDS500 photographs, via the
Train400 set) with Gaussian noise of std 25 added and saved as 8-bit PNG. Their
clean versions ship beside them, only to print PSNR; training never reads them.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

from .data.io import read_image
from .figure import before_after
from .inference import denoise_files, load
from .metrics import psnr
from .train import TrainOptions, train

log = logging.getLogger("dbsn")


def demo_folder() -> Path:
    return Path(str(resources.files("dbsn") / "demo_data"))


def run_demo(out_dir: str, steps: int = 300, progress_bar: bool = True) -> int:
    """Train ``dbsn_tiny`` on the bundled noisy images for ``steps`` steps, denoise them, print PSNR."""
    data = demo_folder()
    out = Path(out_dir)
    run_dir = out / "run"
    options = TrainOptions(
        noisy=str(data / "noisy"), model="dbsn_tiny", noise_model="awgn", steps=steps,
        patch_size=64, batch_size=8, lr=1e-3, val_fraction=0.0, val_every=max(steps // 3, 1),
    )
    resume = (run_dir / "checkpoint.pt").is_file()
    print(f"training dbsn_tiny on {len(list((data / 'noisy').glob('*.png')))} noisy images "
          f"({steps} steps, no clean image used) -> {run_dir}")
    summary = train(options, str(run_dir), resume=resume, progress_bar=progress_bar)
    print(f"trained {summary['steps']} steps in {summary['elapsed_s']:.0f} s; "
          f"estimated noise std {summary['last_validation']['noise_std_est']:.1f} (true: 25)")
    denoiser = load(run_dir / "model.safetensors")
    result = denoise_files(denoiser, [data / "noisy"], out / "denoised")
    print(f"{'image':<12}{'noisy PSNR':>12}{'denoised PSNR':>15}")
    before, after, panels, captions = [], [], [], []
    for path in result.written:
        x = torch.from_numpy(read_image(data / "clean" / path.name)[0])
        y = torch.from_numpy(read_image(data / "noisy" / path.name)[0])
        x_hat = torch.from_numpy(read_image(path)[0])
        before.append(psnr(y, x))
        after.append(psnr(x_hat, x))
        print(f"{path.name:<12}{before[-1]:>12.2f}{after[-1]:>15.2f}")
        panels.append([y.numpy(), x_hat.numpy(), x.numpy()])
        captions += [f"{before[-1]:.2f} dB", f"{after[-1]:.2f} dB", path.name]
    print(f"{'mean':<12}{sum(before) / len(before):>12.2f}{sum(after) / len(after):>15.2f}")
    print(f"denoised images written to {out / 'denoised'}")
    if panels:
        figure = before_after(panels, ["noisy", "denoised", "clean"], out / "before_after.png", captions)
        print(f"before/after figure written to {figure}")
    return 1 if result.failed else 0
