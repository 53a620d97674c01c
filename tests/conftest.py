from pathlib import Path

import numpy as np
import pytest
import torch

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(int(__import__('os').environ.get('DBSN_TEST_THREADS', '2')))


def smooth_image(rng: np.random.Generator, size: int, channels: int = 1) -> np.ndarray:
    """A smooth random image (C, H, W) in [0.1, 0.9]: sums of a few low-frequency waves."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((channels, size, size))
    for c in range(channels):
        for _ in range(4):
            fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
            image[c] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    image = (image - image.min()) / (np.ptp(image) + 1e-9)
    return (0.1 + 0.8 * image).astype(np.float32)


def write_noisy_pngs(folder, n: int = 4, size: int = 40) -> None:
    """``n`` smooth gray images with AWGN of std 25, as 8-bit PNGs ``n0.png, n1.png, ...``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        y = smooth_image(rng, size)[0] + rng.normal(0, 25 / 255, (size, size))
        Image.fromarray(np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)).save(folder / f"n{i}.png")


@pytest.fixture
def noisy_folder(tmp_path):
    """Six 48 x 48 gray PNGs with AWGN of std 25, and their clean versions."""
    from PIL import Image

    rng = np.random.default_rng(0)
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    noisy.mkdir()
    clean.mkdir()
    for i in range(6):
        x = smooth_image(rng, 48)[0]
        y = x + rng.normal(0, 25 / 255, x.shape)
        Image.fromarray(np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)).save(noisy / f"im{i}.png")
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(clean / f"im{i}.png")
    return noisy, clean
