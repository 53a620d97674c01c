"""Peak memory of one untiled pass, measured, beside the figure each model declares for tiling.

Each measurement runs in a fresh process (the peak resident set size only grows), loads the
model, builds a noisy image of the given size, runs one pass with the whole image in one
window, and reports the resident memory the pass added, per pixel:

    python benchmarks/memory.py --models gray color gray-stage1 --sizes 256x256,512x768 --precision fp32,bf16

Medians over ``--repeat`` processes. The declared figure is ``Denoiser.tile_spec().bytes_per_pixel``
(what :func:`dbsn.tiling.plan_tiles` budgets with, for the model under that precision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, torch
import dbsn
name, h, w, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(2)
d = dbsn.load(name, max_memory="1T", precision=precision, device="cpu")
rng = np.random.default_rng(0)
y = torch.from_numpy(np.clip(rng.normal(0.5, 0.1, (1, d.channels, h, w)), 0, 1).astype(np.float32))
d.predict(y[..., :16, :16])  # first-call allocations (threads, kernels) are not the image's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
d.predict(y)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"added": after - before, "declared": d.tile_spec().bytes_per_pixel}))
"""


def measure(name: str, h: int, w: int, precision: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(h), str(w), precision], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gray", "color", "gray-stage1", "color-stage1"])
    parser.add_argument("--sizes", default="256x256,512x768,1024x1024", help="HxW, comma-separated")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"{'model':<16}{'precision':<10}{'size':>11}{'added MB':>10}{'B/px measured':>15}{'B/px declared':>15}"
          f"{'declared / measured':>21}")
    for name in args.models:
        for precision in args.precision.split(","):
            for h, w in sizes:
                runs = [measure(name, h, w, precision) for _ in range(args.repeat)]
                added = statistics.median(r["added"] for r in runs)
                per_pixel = added / (h * w)
                declared = runs[0]["declared"]
                print(f"{name:<16}{precision:<10}{f'{h}x{w}':>11}{added / 2**20:>10.0f}{per_pixel:>15.0f}"
                      f"{declared:>15}{declared / max(per_pixel, 1e-9):>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
