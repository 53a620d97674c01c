"""Which noise level the fusion of a pixel-shuffled model should take, chosen on training images only.

Synthetic correlated noise on 16 bsd432 training images (rng seed 7): white Gaussian noise filtered by
a separable [1, 2, 1] / 4 kernel (correlation 0.64 at lag 1, as camera noise after demosaicking),
scaled to each ``--std``. For each level, ``dbsn train --noisy`` with defaults for ``--minutes``, then
the median (and worst) gain in PSNR over the noisy input of:

- the model's own fusion (its own noise estimate), first pass at the inference stride;
- 8 passes of random-replacing refinement, raw and fused at the model's level;
- the fusion at the level read from each image (``dbsn.noise.diagnosis.noise_level``, the default:
  the root mean square of the channels' levels), with and without the refinement; at the level of
  the flattest blocks of all channels pooled (what ``noise_level`` read before); and at the true
  level (an oracle).

``--gains`` scales the noise of the red, green and blue channels relative to one another (normalised
to a root mean square of 1, so ``--std`` stays the mean level), as a camera's white balance does:
phone photographs often carry twice the noise in blue that they carry in green.

    python benchmarks/shuffle_fusion.py --std 3,10 --minutes 7 -o /work/runs/shuffle_fusion
    python benchmarks/shuffle_fusion.py --std 10 --gains 1.2,0.7,1.6 --minutes 7 -o /work/runs/shuffle_fusion

Every cell is resumable: a finished training run is read back. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from common import DATASETS, correlated_set, dataset, machine, train

IMAGES, SEED = 16, 7


def variants(weights: Path, folder: Path, true_std: float) -> dict[str, list[float]]:
    import torch
    from PIL import Image

    from dbsn.denoiser import Denoiser
    from dbsn.fusion import bayes_fusion, split_at_level
    from dbsn.hub import load_model
    from dbsn.metrics import psnr
    from dbsn.noise.diagnosis import diagnose, noise_level

    def load(path):
        a = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        return torch.from_numpy(np.moveaxis(a, -1, 0).copy())[None]

    def score(a, x):
        return psnr((a.clamp(0, 1) * 255).round() / 255, x)

    model = load_model(str(weights)).eval()
    refined = Denoiser(load_model(str(weights)), device="cpu", precision="fp32", refine=8)
    rows: dict[str, list[float]] = {}
    for noisy in sorted((folder / "noisy").glob("*.png")):
        y, x = load(noisy), load(folder / "clean" / noisy.name)
        with torch.inference_mode():
            parts = model.pixel_parts(y)
            s_mu, s_n = model.average(parts["s_mu"], parts["s_n"])
            mu, base = parts["mu"], score(y, x)
            cells = {"own level": bayes_fusion(y, mu, s_mu, s_n)}
            # the refinement's raw mean, from the model's own first pass (as before the level was read)
            r3 = refined._refined(y, cells["own level"].clamp(0, 1), refined.tile_spec())
            cells["refine 8, raw"] = r3
            cells["refine 8, fused at own level"] = bayes_fusion(y, r3, s_mu, s_n)
            read, pooled = noise_level(y[0].numpy()), diagnose([y[0].numpy()]).std / 255
            for tag, level in (("read", read), ("read, channels pooled", pooled), ("true", true_std / 255)):
                split = split_at_level(s_mu, s_n, torch.tensor([level * level]))
                cells[f"level {tag}"] = bayes_fusion(y, mu, *split)
                cells[f"level {tag}, refine 8"] = bayes_fusion(y, r3, *split)
        for label, out in cells.items():
            rows.setdefault(label, []).append(score(out, x) - base)
        rows.setdefault("noisy input (dB)", []).append(base)
        rows.setdefault("level read (0-255)", []).append(255 * read)
        rows.setdefault("level read, pooled (0-255)", []).append(255 * pooled)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--std", default="3,10", type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--minutes", type=float, default=7.0)
    p.add_argument("--gains", default=None, type=lambda s: [float(v) for v in s.split(",")],
                   help="the noise std of the R, G and B channels relative to one another (default: equal)")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    source = dataset(args.datasets, "bsd432")
    if source is None:
        return 2
    print(machine())
    for std in args.std:
        gains = "" if args.gains is None else "-gains" + "_".join(f"{g:g}" for g in args.gains)
        folder = args.out / f"std{std:g}{gains}"
        correlated_set(source, folder, np.array([1.0, 2.0, 1.0]) / 4, std, IMAGES, SEED, "RGB", args.gains)
        run_dir = folder / "run"
        train(["dbsn", "-q", "train", "--noisy", str(folder / "noisy"), "--minutes", f"{args.minutes:g}"], run_dir)
        rows = variants(run_dir / "model.safetensors", folder, std)
        print(f"\ncorrelated noise of std {std:g}{', channel gains ' + str(args.gains) if args.gains else ''}, "
              f"{IMAGES} bsd432 images: gain over the noisy input (dB)")
        print(f"{'fusion':<32}{'median':>8}{'min':>8}{'max':>8}")
        for label, values in rows.items():
            print(f"{label:<32}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
