"""Seconds and peak memory of one `Denoiser.predict` on a photo-size mosaic, under a given memory budget.

    python benchmarks/one_pass.py color 512 768 1G      # tiled under 1G
    python benchmarks/one_pass.py color 512 768 auto    # the default budget

The image is a mosaic of the CBSD68 images (gray ones for gray models) with Gaussian noise
of std 25 (seed 0); it is used for timing only, nothing is chosen on it.
"""

import resource
import sys
import time

import numpy as np
import torch

import dbsn
from common import DATASETS, mosaic


def main() -> int:
    name, h, w, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(2)
    channels = 3 if name.startswith("color") else 1
    canvas = mosaic(DATASETS / "cbsd68", h, w, channels)
    y = canvas + np.random.default_rng(0).normal(0, 25 / 255, canvas.shape).astype(np.float32)
    denoiser = dbsn.load(name, max_memory=budget, device="cpu")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    denoiser.predict(torch.from_numpy(y)[None])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = denoiser.tile_spec()
    print(f"{name} {h}x{w} max_memory={budget} ({denoiser.max_memory / 2**30:.2f}G): {seconds:.2f} s, peak RSS "
          f"{peak / 1024:.0f} MB (before the pass {base / 1024:.0f} MB), declared {spec.bytes_per_pixel} B/px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
