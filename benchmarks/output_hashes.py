"""SHA-256 of every bundled model's fp32 output on fixed noisy inputs: run it before and after a change
that must not alter results, on the same machine, and compare the lines.

    python benchmarks/output_hashes.py            # print one line per model
    python benchmarks/output_hashes.py --write    # also refresh tests/data/pinned_outputs.npz

The inputs are 40 x 48 crops of two bundled demo images with seeded Gaussian noise of std 25
(gray for gray models, colour for colour ones). ``--write`` stores the outputs themselves, which
``tests/test_pinned.py`` compares within 1e-5 (hashes are exact only on one machine: another CPU
may round convolutions differently).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

import dbsn
from dbsn.hub import bundled_models

PINNED = Path(__file__).resolve().parents[1] / "tests" / "data" / "pinned_outputs.npz"


def pinned_input(channels: int) -> torch.Tensor:
    """A ``(1, C, 40, 48)`` noisy crop of the bundled demo image, the same on every machine."""
    from importlib import resources

    from dbsn.data import read_image

    image = resources.files("dbsn") / "demo_data" / "clean" / ("color_tiger.png" if channels == 3 else "gray_castle.png")
    x = read_image(Path(str(image)), channels=channels)[0][:, 60:100, 40:88]
    noise = np.random.default_rng(0).normal(0, 25 / 255, x.shape).astype(np.float32)
    return torch.from_numpy(x + noise)[None]


def outputs() -> dict[str, np.ndarray]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: no reduction order that depends on the thread count
    try:
        out = {}
        for name, entry in bundled_models().items():
            denoiser = dbsn.load(name, device="cpu", precision="fp32")
            out[name] = denoiser.predict(pinned_input(entry.channels))["x_hat"][0].numpy()
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help=f"store the outputs in {PINNED}")
    args = p.parse_args()
    results = outputs()
    for name, array in results.items():
        print(f"{hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]}  {name}")
    if args.write:
        PINNED.parent.mkdir(exist_ok=True)
        np.savez_compressed(PINNED, **results)
        print(f"wrote {PINNED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
