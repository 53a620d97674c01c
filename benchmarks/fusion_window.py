"""How a stage-1 model should fuse ``mu`` with ``y`` at inference, chosen on training images only.

The paper fuses with the variances its heads predict (``--fusion heads``). Where the blind spot holds,
``(y - mu)^2`` measures ``var_mu + var_n`` on the image itself, so ``var_mu`` can be measured instead
(:func:`dbsn.fusion.measured_variances`): over the whole image (``image``), or over a window around each
pixel (``local``), which lets the fusion lean to ``y`` on texture and to ``mu`` on flat areas. This
benchmark scores each fusion on the same ``mu`` (one network pass per image), for:

- the bundled stage-1 models on ``--images`` bsd432 training images (rng seed 3 for the draw and the
  noise) with synthetic noise of the kind each was trained for: AWGN at 15, 25 and 50 (gray), 25
  (colour), HG 40,10 (gray and colour), MG (colour);
- with ``--pairs DIR:WEIGHTS``, a model trained by ``dbsn train --noisy`` on ``DIR/noisy`` and scored
  against ``DIR/clean`` (the user's case: denoise what one trained on), e.g. the camera-pipeline set and
  runs of ``shuffle_fusion.py --camera`` or ``shuffle_stride.py``.

It prints, per case, the median and mean PSNR of each fusion, the median gain over the heads' fusion with
the worst image, and the fusion's own time per image (the network pass, shared, is timed apart)::

    python benchmarks/fusion_window.py --images 12 \\
        --pairs /work/runs/shuffle_fusion/camera12:/work/runs/shuffle_fusion/camera12/run/model.safetensors

The bsd432 images were among the bundled models' training images (patches, a few passes in 40 minutes);
the fusion learns nothing from them: only the window is chosen here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import DATASETS, dataset, machine

CASES = ("gray-stage1 awgn:15", "gray-stage1 awgn:25", "gray-stage1 awgn:50", "color-stage1 awgn:25",
         "gray-hg-stage1 hg:40,10", "color-hg-stage1 hg:40,10", "color-mg-stage1 mg:75")
WINDOWS = (9, 17, 25, 33)
SEED = 3


def fusions(windows):
    """(label, fusion, window) in the order the table prints them; the heads' fusion first (the baseline)."""
    return [("heads", "heads", None), ("image", "image", None)] + [(f"local {w}", "local", w) for w in windows]


def score_case(denoiser, pairs, windows) -> dict:
    """PSNR of each fusion on each ``(x, y)`` pair (``(1, C, H, W)`` tensors), and the time each took."""
    import torch

    from dbsn.metrics import psnr

    psnrs = {label: [] for label, _, _ in fusions(windows)}
    seconds = {label: [] for label in psnrs}
    network = []
    model = denoiser.model
    for x, y in pairs:
        with torch.inference_mode():
            start = time.perf_counter()
            out = {k: v.float() for k, v in model.assemble(y, model.pixel_parts(y)).items()}
            network.append(time.perf_counter() - start)
            for label, fusion, window in fusions(windows):
                start = time.perf_counter()
                if fusion == "heads":  # the paper's, shuffled models included
                    x_hat = out["x_hat"]
                else:
                    denoiser.fusion, denoiser.fusion_window = fusion, window
                    x_hat = denoiser._fuse(y, out["mu"], out["var_n"], denoiser._noise_variance(y))["x_hat"]
                seconds[label].append(time.perf_counter() - start)
                psnrs[label].append(psnr(x_hat.clamp(0, 1), x))
        print(".", end="", flush=True)
    print()
    return {"psnr": psnrs, "seconds": seconds, "network": network}


def print_case(name: str, result: dict) -> None:
    base = result["psnr"]["heads"]
    print(f"{name}: {len(base)} images; network pass {statistics.median(result['network']):.2f} s per image")
    print(f"  {'fusion':<10} {'median':>8} {'mean':>8} {'gain (median)':>14} {'worst':>7} {'s/image':>8}")
    for label, values in result["psnr"].items():
        gains = [v - b for v, b in zip(values, base)]
        print(f"  {label:<10} {statistics.median(values):8.2f} {statistics.mean(values):8.2f} "
              f"{statistics.median(gains):+14.2f} {min(gains):+7.2f} {statistics.median(result['seconds'][label]):8.3f}")


def synthetic_pairs(source: Path, noise_spec: str, channels: int, images: int):
    import torch

    from dbsn.data.io import list_images, read_image
    from dbsn.noise.models import parse_noise

    noise = parse_noise(noise_spec)
    generator = torch.Generator().manual_seed(SEED)
    names = list_images(source)
    pick = sorted(np.random.default_rng(SEED).choice(len(names), images, replace=False))
    for i in pick:
        x = torch.from_numpy(read_image(names[i], channels=channels)[0])[None].float()
        yield x, noise.add(x[0], generator)[None].float()


def folder_pairs(folder: Path, images: int | None):
    import torch

    from dbsn.data.io import list_images, read_image

    for path in list_images(folder / "clean")[:images]:
        x = torch.from_numpy(read_image(path)[0])[None].float()
        y = torch.from_numpy(read_image(next((folder / "noisy").glob(path.stem + ".*")))[0])[None].float()
        yield x, y


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--cases", default=";".join(CASES), type=lambda s: [c for c in s.split(";") if c],
                   help="'MODEL NOISE' pairs separated by ';' (a bundled stage-1 model and a noise spec); '' for none")
    p.add_argument("--pairs", nargs="*", default=[], help="DIR:WEIGHTS, a noisy/clean folder and a model")
    p.add_argument("--windows", default=",".join(map(str, WINDOWS)), type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--datasets", type=Path, default=DATASETS)
    args = p.parse_args()

    import dbsn

    print(machine())
    source = dataset(args.datasets, "bsd432")
    if source is None and not args.pairs:
        return 1
    summary = {}
    for case in args.cases if source is not None else []:
        name, noise = case.split()
        denoiser = dbsn.load(name, device="cpu", precision="fp32")
        summary[case] = score_case(denoiser, synthetic_pairs(source, noise, denoiser.channels, args.images),
                                   args.windows)
        print_case(case, summary[case])
    for item in args.pairs:
        folder, weights = item.split(":", 1)
        denoiser = dbsn.load(weights, device="cpu", precision="fp32")
        label = f"{Path(folder).name} ({'pixel-shuffled' if denoiser.shuffled else 'plain'})"
        summary[label] = score_case(denoiser, folder_pairs(Path(folder), args.images), args.windows)
        print_case(label, summary[label])
    if summary:
        print("\nmedian gain over the heads' fusion, per case")
        print(f"{'case':<36}" + "".join(f"{label:>10}" for label, _, _ in fusions(args.windows)[1:]))
        for case, result in summary.items():
            base = result["psnr"]["heads"]
            cells = [statistics.median(v - b for v, b in zip(result["psnr"][label], base))
                     for label, _, _ in fusions(args.windows)[1:]]
            print(f"{case:<36}" + "".join(f"{c:+10.2f}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
