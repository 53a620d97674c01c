"""What the benchmark scripts share: where the datasets are, running a command, image subsets."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
TEST_SET = {1: "bsd68", 3: "cbsd68"}  # the test set of gray and of colour models
MEASURED = "### Measured"  # where a model card's results begin (paper_tables.py --cards)


def run(cmd: list[str]) -> float:
    """Echo and run ``cmd``, failing loudly; returns its wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def train(cmd: list[str], run_dir: Path) -> Path:
    """Run the training command ``cmd`` into ``run_dir`` unless its weights are there, with ``--resume`` where
    a stopped run left its checkpoint; the weights."""
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        run([*cmd, *resume, "-o", str(run_dir)])
    return weights


def dataset(datasets: Path, name: str) -> Path | None:
    """``datasets / name``, or None (with a message) when it is not there."""
    folder = datasets / name
    if not folder.is_dir():
        print(f"dataset {folder} not found", file=sys.stderr)
        return None
    return folder


def first_images(folder: Path, n: int | None) -> Path:
    """``folder`` itself, or a temporary folder linking its first ``n`` images."""
    from dbsn.data import list_images

    if not n:
        return folder
    subset = Path(tempfile.mkdtemp(prefix="dbsn-subset-"))
    for path in list_images(folder)[:n]:
        (subset / path.name).symlink_to(path.resolve())
    return subset


def mosaic(folder: Path, h: int, w: int, channels: int):
    """An ``(channels, h, w)`` float32 array tiled with the images of ``folder`` in order, each cropped
    to the smallest image's size: a photo-size clean image made of real ones, for timing."""
    import numpy as np

    from dbsn.data import list_images, read_image

    images = [read_image(path, channels=channels)[0] for path in list_images(folder)]
    th = min(im.shape[1] for im in images)
    tw = min(im.shape[2] for im in images)
    canvas = np.zeros((channels, h, w), np.float32)
    i = 0
    for r in range(0, h, th):
        for c in range(0, w, tw):
            canvas[:, r:r + th, c:c + tw] = images[i % len(images)][:, :min(th, h - r), :min(tw, w - c)]
            i += 1
    return canvas


def photo_shape(megapixels: float) -> tuple[int, int]:
    """Height and width (3:2, multiples of 8) of an image of about ``megapixels``."""
    h = round((megapixels * 1e6 / 1.5) ** 0.5 / 8) * 8
    return h, round(h * 1.5 / 8) * 8


def _draw(source: Path, images: int, seed: int):
    """``images`` image paths drawn from ``source`` without replacement (rng ``seed``), in the folder's
    order, and a fresh rng of the same seed for their noise."""
    import numpy as np

    from dbsn.data import list_images

    names = list_images(source)
    pick = sorted(np.random.default_rng(seed).choice(len(names), images, replace=False))
    return [names[i] for i in pick], np.random.default_rng(seed)


def correlated_set(source: Path, folder: Path, kernel, std: float, images: int, seed: int, mode: str,
                   gains=None) -> None:
    """``folder/noisy`` and ``folder/clean``: ``images`` images drawn from ``source`` (rng ``seed``) as ``mode``
    ("L" or "RGB"), with white Gaussian noise filtered along both axes by ``kernel`` and scaled to std
    ``std`` (0-255 units); nothing is written when ``folder`` already holds them. ``gains`` (RGB): the
    channels' noise std relative to one another, as a camera's white balance scales them, normalised to a
    root mean square of 1 so that ``std`` stays the noise's mean level."""
    import numpy as np
    from PIL import Image

    if len(list(folder.glob("clean/*.png"))) == images:
        return
    picked, rng = _draw(source, images, seed)
    scale = 1.0 if gains is None else np.asarray(gains, np.float64) / np.sqrt(np.mean(np.square(gains)))
    for sub in ("noisy", "clean"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for path in picked:
        x = np.asarray(Image.open(path).convert(mode), np.float64)
        z = rng.standard_normal(x.shape)
        z = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 0, z)
        z = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, z)
        y = np.clip(np.round(x + z * scale * std / z.std()), 0, 255).astype(np.uint8)
        Image.fromarray(y).save(folder / "noisy" / f"{path.stem}.png")
        Image.fromarray(x.astype(np.uint8)).save(folder / "clean" / f"{path.stem}.png")


def _bilinear_demosaic(raw):
    """RGB from an RGGB Bayer mosaic by bilinear interpolation, each missing value the mean of its
    nearest samples of that colour (reflected at the borders)."""
    import numpy as np

    h, w = raw.shape
    masks = np.zeros((3, h, w))
    masks[0, 0::2, 0::2] = 1
    masks[1, 0::2, 1::2] = masks[1, 1::2, 0::2] = 1
    masks[2, 1::2, 1::2] = 1
    red_blue = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4  # a quarter of the sites sampled
    green = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]]) / 4  # half of them

    def conv(a, k):
        p = np.pad(a, 1, mode="reflect")
        return sum(k[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))

    return np.stack([conv(raw * masks[c], green if c == 1 else red_blue) for c in range(3)], axis=-1)


def camera_set(source: Path, folder: Path, std: float, images: int, seed: int) -> None:
    """``folder/noisy`` and ``folder/clean``: ``images`` colour images drawn from ``source`` (rng ``seed``)
    through a camera's pipeline: sRGB to linear (gamma 2.2), an RGGB Bayer mosaic, Poisson-Gaussian
    noise on it (a photon share ``a`` and a read share ``b = a / 20`` of the variance ``a x + b``),
    bilinear demosaicking, gamma 1/2.2, 8 bits. The clean image is the same pipeline without the
    noise, so that only the noise tells them apart. Demosaicking correlates the noise of
    neighbouring pixels, most in the interpolated red and blue; the gamma makes its level depend on
    the signal. ``a`` is set so that the noise std of the sRGB output is ``std`` (0-255 units)
    on average over the images; nothing is written when ``folder`` already holds them."""
    import numpy as np
    from PIL import Image

    if len(list(folder.glob("clean/*.png"))) == images:
        return
    picked, rng = _draw(source, images, seed)
    raws, zs = [], []
    for path in picked:
        linear = (np.asarray(Image.open(path).convert("RGB"), np.float64) / 255) ** 2.2
        raw = np.zeros(linear.shape[:2])
        raw[0::2, 0::2], raw[0::2, 1::2] = linear[0::2, 0::2, 0], linear[0::2, 1::2, 1]
        raw[1::2, 0::2], raw[1::2, 1::2] = linear[1::2, 0::2, 1], linear[1::2, 1::2, 2]
        raws.append(raw)
        zs.append(rng.standard_normal(raw.shape))

    def develop(raw):
        return np.clip(_bilinear_demosaic(raw), 0, 1) ** (1 / 2.2) * 255

    cleans = [develop(r) for r in raws]  # developed once, for the bisection and the clean files

    def output_std(a):
        return float(np.mean([np.std(develop(r + np.sqrt(a * r + a / 20) * z) - c)
                              for r, z, c in zip(raws, zs, cleans)]))

    lo, hi = 1e-6, 1.0  # the output std grows with a: bisect on its logarithm
    for _ in range(30):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if output_std(mid) < std else (lo, mid)
    a = np.sqrt(lo * hi)
    for sub in ("noisy", "clean"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for path, raw, z, clean in zip(picked, raws, zs, cleans):
        noisy = np.round(develop(raw + np.sqrt(a * raw + a / 20) * z)).astype(np.uint8)
        Image.fromarray(noisy).save(folder / "noisy" / f"{path.stem}.png")
        Image.fromarray(np.round(clean).astype(np.uint8)).save(folder / "clean" / f"{path.stem}.png")


def machine() -> str:
    """The CPU model, core count, GPU and torch version: what a measured number ran on."""
    import os
    import platform

    import torch

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def require_bm3d(hint: str = "") -> None:
    """Stop with a clear message, before any work is done, when the optional ``bm3d`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("bm3d") is None:
        sys.exit(f'the BM3D baseline needs the bm3d package: pip install "dbsn[bm3d]"{hint}')


def bm3d_denoise(y, std: float):
    """BM3D (gray) or CBM3D (colour) of a noisy ``(C, H, W)`` tensor with noise std ``std`` (0-1 units).

    Returns the estimate as a float32 tensor clamped to [0, 1]. Needs ``pip install bm3d``.
    """
    import bm3d
    import torch

    array = y.numpy()
    if array.shape[0] == 1:
        out = bm3d.bm3d(array[0], sigma_psd=std)[None]
    else:
        out = bm3d.bm3d_rgb(array.transpose(1, 2, 0), sigma_psd=std).transpose(2, 0, 1)
    return torch.from_numpy(out.copy()).float().clamp(0, 1)


def bm3d_true_std(y, x):
    """BM3D/CBM3D of a noisy ``(C, H, W)`` tensor told its true noise std, ``std(y - x)`` against the
    clean ``x``: an upper bound of what it can do, since no user has that std."""
    return bm3d_denoise(y, float((y - x).std(correction=0)))


def bm3d_rows(clean: Path, noise: str, channels: int, n: int) -> list[dict]:
    """BM3D (CBM3D) PSNR and seconds on the first ``n`` images of ``clean`` with the protocol's seed-0 noise."""
    import torch

    from dbsn.data import list_images, read_image
    from dbsn.metrics import psnr
    from dbsn.noise import parse_noise

    model, rows = parse_noise(noise), []
    for path in list_images(clean)[:n]:
        x = torch.from_numpy(read_image(path, channels=channels)[0])
        y = model.add_protocol(x, seed=0)
        start = time.perf_counter()
        out = bm3d_denoise(y, model.std / 255.0)
        rows.append({"image": path.name, "psnr": psnr(out, x), "seconds": time.perf_counter() - start})
    return rows
