"""Which variances the fusion of a pixel-shuffled model should take, chosen on training images only.

Synthetic correlated noise on 16 bsd432 training images (rng seed 7): white Gaussian noise filtered by
a separable [1, 2, 1] / 4 kernel (correlation 0.64 at lag 1, as camera noise after demosaicking),
scaled to each ``--std``. For each level, ``dbsn train --noisy`` with defaults for ``--minutes``, then
the median (and worst) gain in PSNR over the noisy input of:

- the model's own fusion (its own ``s_mu`` and ``s_n``), first pass at the inference stride;
- 8 passes of random-replacing refinement, raw;
- the fusion before 2026-12-07, the baseline: the model's own variances split again at the level read
  from each image (the root mean square of its channels' levels), at the level of all channels'
  flattest blocks pooled (before that), and at the true level;
- the default (:class:`dbsn.Denoiser`): variances measured on each image
  (:func:`dbsn.fusion.measured_variances`) at the lower of the levels read from ``y`` and from
  ``y - mu``, also with 8 passes of refinement; at the level read from ``y`` alone; at the true level;
- an oracle: the best weight per image and channel on ``y - mu``, from the clean image.

``--camera`` replaces the filtered Gaussian noise by a camera's pipeline (``common.camera_set``):
Poisson-Gaussian noise on an RGGB mosaic, bilinear demosaicking and gamma, so that the noise is
correlated (most in red and blue) and depends on the signal, and the diagnosis picks ``hg`` heads.
Its "true level" is then each image's own ``std(noisy - clean)``.

``--gains`` scales the noise of the red, green and blue channels relative to one another (normalised
to a root mean square of 1, so ``--std`` stays the mean level), as a camera's white balance does:
phone photographs often carry twice the noise in blue that they carry in green.

    python benchmarks/shuffle_fusion.py --std 3,10 --minutes 7 -o /work/runs/shuffle_fusion
    python benchmarks/shuffle_fusion.py --std 10 --gains 1.2,0.7,1.6 --minutes 7 -o /work/runs/shuffle_fusion
    python benchmarks/shuffle_fusion.py --std 12 --camera --minutes 7 -o /work/runs/shuffle_fusion

Every cell is resumable: a finished training run is read back. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from common import DATASETS, camera_set, correlated_set, dataset, machine, train

IMAGES, SEED = 16, 7


def split_at_level(s_mu, s_n, var_level):
    """The fusion before 2026-12-07 (the baseline here): the model's own ``(s_mu, s_n)``, with ``cov_n`` scaled
    down per image to ``var_level`` where it is higher and the rest given to ``cov_mu`` (the same sum)."""
    from dbsn import linalg

    var_n = linalg.diagonal(s_n).flatten(1).mean(1)
    k = (var_level.to(var_n) / var_n.clamp_min(linalg.VAR_FLOOR)).clamp(max=1.0)
    k = k.view(-1, *([1] * (s_n.dim() - 1)))
    return s_mu + (1 - k) * s_n, k * s_n


def variants(weights: Path, folder: Path, true_std: float | None) -> dict[str, list[float]]:
    """The gain of each fusion per image; ``true_std`` (0-255) is the noise's level, or ``None``: each
    image's own ``std(noisy - clean)``."""
    import torch
    from PIL import Image

    from dbsn.denoiser import Denoiser
    from dbsn.fusion import bayes_fusion, measured_variances
    from dbsn.hub import load_model
    from dbsn.metrics import psnr
    from dbsn.noise.diagnosis import channel_levels, diagnose, noise_level

    def load(path):
        a = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        return torch.from_numpy(np.moveaxis(a, -1, 0).copy())[None]

    def score(a, x):
        return psnr((a.clamp(0, 1) * 255).round() / 255, x)

    model = load_model(str(weights)).eval()
    plain = Denoiser(load_model(str(weights)), device="cpu", precision="fp32")
    refined = Denoiser(load_model(str(weights)), device="cpu", precision="fp32", refine=8)
    rows: dict[str, list[float]] = {}
    for noisy in sorted((folder / "noisy").glob("*.png")):
        y, x = load(noisy), load(folder / "clean" / noisy.name)
        with torch.inference_mode():
            parts = model.pixel_parts(y)
            s_mu, s_n = model.average(parts["s_mu"], parts["s_n"])
            mu, base = parts["mu"], score(y, x)
            own = bayes_fusion(y, mu, s_mu, s_n)
            cells = {"own level": own, "refine 8, raw": refined._refined(y, own.clamp(0, 1), refined.tile_spec())}
            read, pooled = noise_level(y[0].numpy()), diagnose([y[0].numpy()]).std / 255
            true_var = ((y - x) ** 2).mean(dim=(-2, -1))  # per channel: the oracles' level
            true = true_std / 255 if true_std is not None else float(true_var.mean().sqrt())
            for tag, level in (("read", read), ("read, channels pooled", pooled), ("true", true)):
                cells[f"split at level {tag}"] = bayes_fusion(y, mu, *split_at_level(s_mu, s_n, torch.tensor([level**2])))
            cells["measured, level of y alone"] = bayes_fusion(
                y, mu, *measured_variances(y, mu, torch.from_numpy(channel_levels(y[0].numpy())**2)[None]))
            cells["measured (the default)"] = plain.predict(y)["x_hat"]
            cells["measured, refine 8"] = refined.predict(y)["x_hat"]
            cells["measured, true level (oracle)"] = bayes_fusion(y, mu, *measured_variances(y, mu, true_var))
            r, t = y - mu, x - mu
            weight = (r * t).sum(dim=(-2, -1), keepdim=True) / (r * r).sum(dim=(-2, -1), keepdim=True)
            cells["best weight per channel (oracle)"] = mu + weight * r
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
    p.add_argument("--camera", action="store_true",
                   help="noise through a camera's pipeline (mosaic, Poisson-Gaussian, demosaicking, gamma)")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    source = dataset(args.datasets, "bsd432")
    if source is None:
        return 2
    print(machine())
    for std in args.std:
        if args.camera:
            folder = args.out / f"camera{std:g}"
            camera_set(source, folder, std, IMAGES, SEED)
        else:
            gains = "" if args.gains is None else "-gains" + "_".join(f"{g:g}" for g in args.gains)
            folder = args.out / f"std{std:g}{gains}"
            correlated_set(source, folder, np.array([1.0, 2.0, 1.0]) / 4, std, IMAGES, SEED, "RGB", args.gains)
        run_dir = folder / "run"
        train(["dbsn", "-q", "train", "--noisy", str(folder / "noisy"), "--minutes", f"{args.minutes:g}"], run_dir)
        rows = variants(run_dir / "model.safetensors", folder, None if args.camera else std)
        kind = "camera-pipeline noise" if args.camera else "correlated noise"
        print(f"\n{kind} of std {std:g}{', channel gains ' + str(args.gains) if args.gains else ''}, "
              f"{IMAGES} bsd432 images: gain over the noisy input (dB)")
        print(f"{'fusion':<36}{'median':>8}{'min':>8}{'max':>8}")
        for label, values in rows.items():
            print(f"{label:<36}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
