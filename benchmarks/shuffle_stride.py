"""Which pixel-shuffle stride to train with, for noise of a given correlation, chosen on training images only.

The diagnosis (:mod:`dbsn.noise.diagnosis`) reads a correlation length ``L`` from noisy images; the
stride rule turns it into a training stride. AP-BSN's rule, the default so far, is ``max(5, L + 1)``:
tuned on smartphone noise, it subsamples a 512 x 512 image to sub-images of about 100 x 100. The
smallest stride that breaks the correlation is ``L``. This benchmark measures both, and the strides
between, on noise whose correlation is known.

Synthetic correlated noise on 16 gray bsd432 training images (rng seed 7): white Gaussian noise
filtered along both axes by a kernel, scaled to std ``--std`` (0-255 units):

- ``[a, 1, a]`` with ``a`` chosen for a correlation ``rho`` at lag 1 of 0.15, 0.25, 0.35, 0.45, 0.55 and 0.65, nothing
  beyond (correlation length 2);
- ``[1 2 1]/4``: 0.67 at lag 1, 0.17 at lag 2 (length 3).

For each noise and each training stride, ``dbsn train --noisy`` for ``--minutes`` with that
``--pd-stride`` and defaults otherwise; then inference strides 1, 2 and the training stride, and the
default (``min(2, s)``) with 8 passes of random-replacing refinement. Each cell is the median (and
worst) gain in PSNR over the noisy input on the 16 images (the user's case: denoise what one trained
on). The diagnosis of each set and what each rule picks from it are printed above its table.

    python benchmarks/shuffle_stride.py --minutes 5 -o /work/runs/shuffle_stride

Every training run is resumable: a finished one is read back. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from common import DATASETS, correlated_set, dataset, machine, train

IMAGES, SEED = 16, 7


def kernel_for(rho: float) -> np.ndarray:
    """``[a, 1, a]`` whose filtered white noise has correlation ``rho`` at lag 1: ``2a / (1 + 2a^2) = rho``."""
    a = (1 - math.sqrt(1 - 2 * rho * rho)) / (2 * rho)
    return np.array([a, 1.0, a])


NOISES = {  # name: the separable kernel
    "rho 0.15": kernel_for(0.15),
    "rho 0.25": kernel_for(0.25),
    "rho 0.35": kernel_for(0.35),
    "rho 0.45": kernel_for(0.45),
    "rho 0.55": kernel_for(0.55),
    "rho 0.65": kernel_for(0.65),
    "[1 2 1]/4": np.array([1.0, 2.0, 1.0]) / 4,
}


def load(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32)[None] / 255


def diagnosed(folder: Path) -> str:
    from dbsn.noise.diagnosis import MAX_STRIDE, diagnose

    d = diagnose([load(p) for p in sorted((folder / "noisy").glob("*.png"))])
    length = d.correlation_length
    ap, smallest = min(max(5, length + 1), MAX_STRIDE), length
    return (f"diagnosis: rho {d.rho[0][1]:+.2f} / {d.rho[1][0]:+.2f} at lag 1 (h / v), {d.rho[0][2]:+.2f} at lag 2, "
            f"length {length}, std {d.std:.1f}; rule max(5, L+1) picks {ap}, rule L picks {smallest}")


def cells(weights: Path, folder: Path, train_stride: int) -> dict[str, list[float]]:
    import torch

    from dbsn.denoiser import Denoiser
    from dbsn.hub import load_model
    from dbsn.metrics import psnr

    def score(a: np.ndarray, x: np.ndarray) -> float:
        return psnr(torch.from_numpy(np.round(np.clip(a, 0, 1) * 255) / 255)[None], torch.from_numpy(x)[None])

    infer = sorted({s for s in (1, 2) if s <= train_stride} | {train_stride})
    default = min(2, train_stride)
    settings = [(s, 0) for s in infer] + ([(default, 8)] if train_stride > 1 else [])
    pairs = [(load(noisy), load(folder / "clean" / noisy.name)) for noisy in sorted((folder / "noisy").glob("*.png"))]
    model = load_model(str(weights))
    rows: dict[str, list[float]] = {}
    for s, refine in settings:
        if train_stride > 1:  # the inference stride is read at each call
            model.bsn.stride_infer = s
        denoiser = Denoiser(model, device="cpu", precision="fp32", refine=refine)
        label = f"infer {s}" + (f", refine {refine}" if refine else "")
        rows[label] = [score(denoiser.denoise(y[0])[None], x) - score(y, x) for y, x in pairs]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noises", default=",".join(NOISES), type=lambda s: s.split(","))
    p.add_argument("--strides", default="1,2,3,5", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--std", type=float, default=15.0)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    source = dataset(args.datasets, "bsd432")
    if source is None:
        return 2
    print(machine())
    summary = {}
    for name in args.noises:
        folder = args.out / "".join(c for c in name if c.isalnum() or c == ".")
        correlated_set(source, folder, NOISES[name], args.std, IMAGES, SEED, "L")
        print(f"\n{name}, std {args.std:g}, {IMAGES} gray bsd432 images; {diagnosed(folder)}")
        print(f"{'train stride':<14}{'inference':<20}{'median gain':>12}{'worst':>8}{'best':>8}")
        for stride in args.strides:
            run_dir = folder / f"pd{stride}"
            train(["dbsn", "-q", "train", "--noisy", str(folder / "noisy"), "--pd-stride", str(stride),
                   "--minutes", f"{args.minutes:g}"], run_dir)
            scored = folder / f"pd{stride}.json"
            if not scored.exists():
                scored.write_text(json.dumps(cells(run_dir / "model.safetensors", folder, stride)))
            for label, gains in json.loads(scored.read_text()).items():
                median = statistics.median(gains)
                summary[f"{name} | pd {stride} | {label}"] = median
                print(f"{stride:<14}{label:<20}{median:>12.2f}{min(gains):>8.2f}{max(gains):>8.2f}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
