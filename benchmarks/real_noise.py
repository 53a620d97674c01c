"""Real noise, the user's case: camera photographs learned from their noisy images alone, scored on
real pairs whose clean images no model saw and nothing was chosen on.

For each set (``noisy/`` and ``clean/`` with the same names) one table row per method, PSNR of the
8-bit output against the clean image, mean over the set:

- the noisy input itself;
- the bundled ``color`` (AWGN) and ``color-hg`` models, trained on clean images, and ``color-real``,
  learned from the noisy photographs of the three sets alone (their clean images only score it);
- the user's path: ``dbsn train --noisy SET/noisy --minutes M`` with no other option (the noise
  diagnosis chooses the heads and the pixel-shuffle stride), then denoising with the run's weights
  as ``dbsn denoise`` does, with its defaults;
- with ``--ablate``: the same training with ``--pd-stride 1`` (the plain blind spot);
- with ``--previous-fusion``: every stage-1 model again, fused as before 2026-12-08 (the baseline): a
  pixel-shuffled one with one variance per image and channel measured on the image (``--fusion image``),
  a plain one with its heads' own (``--fusion heads``), instead of variances measured around each pixel
  (``--fusion local``, :func:`dbsn.fusion.measured_variances`). (``--ablate-level``, the fusion before
  2026-12-07, went with the code it measured.)
- CBM3D told each image's true noise std (``std(noisy - clean)``), on the first ``--bm3d`` images,
  with every method's mean on those images beside it.

It prints the diagnosis of each set, the per-image gain of the user's path over the noisy input
(median, worst, images below the input), and the published self-supervised numbers on SIDD as a
bound (other images). Every cell is resumable: a finished training run or score is read back.

    python benchmarks/real_noise.py --sets sidd_samples12,cc15,polyu --minutes 15 --bm3d 8 -o /work/runs/real_noise
    python benchmarks/real_noise.py --sets polyu:20 ...   # score the first 20 pairs only

The budget is wall-clock minutes of ``dbsn train`` (the whole machine): run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import DATASETS, bm3d_true_std, dataset, machine, require_bm3d, train

SETS = ("sidd_samples12", "polyu", "cc15")
BUNDLED = ("color", "color-hg", "color-real")
# self-supervised, trained on the noisy images, SIDD validation / benchmark (PSNR, dB): a bound, not a measure
PUBLISHED = "AP-BSN 35.76 / 35.97, AT-BSN 37.88 (validation), TM-BSN 38.31 (benchmark)"


def pairs(folder: Path) -> list[tuple[Path, Path]]:
    from dbsn.data import list_images

    clean = {p.stem: p for p in list_images(folder / "clean")}
    return [(p, clean[p.stem]) for p in list_images(folder / "noisy") if p.stem in clean]


def score(out: Path, label: str, pairs_: list, denoise) -> dict:
    """PSNR per image of ``denoise(noisy, clean) -> uint8 array`` (``(H, W, 3)`` uint8 arrays; only CBM3D
    reads the clean one, for its true noise std), cached in ``out / label.json``."""
    from dbsn.data.io import atomic_path
    from dbsn.metrics import psnr
    import torch

    path = out / f"{label}.json"
    if path.exists():
        return json.loads(path.read_text())
    from PIL import Image

    rows, start = [], time.perf_counter()
    for noisy, clean in pairs_:
        y = np.asarray(Image.open(noisy).convert("RGB"))
        x = np.asarray(Image.open(clean).convert("RGB"))
        x_hat = y if denoise is None else denoise(y, x)
        value = psnr(torch.from_numpy(x_hat.astype(np.float32) / 255), torch.from_numpy(x.astype(np.float32) / 255))
        rows.append({"image": noisy.name, "psnr": value})
    result = {"images": rows, "seconds": time.perf_counter() - start}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def cbm3d(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    import torch

    yf, xf = (torch.from_numpy(np.moveaxis(a.astype(np.float32) / 255, -1, 0)) for a in (y, x))
    out = bm3d_true_std(yf, xf).numpy()
    return np.round(np.moveaxis(out, 0, -1) * 255).astype(np.uint8)


def diagnose_only(datasets: Path, names: list[str]) -> int:
    """The diagnosis's verdicts on real noise and on synthetic noise that must read as independent."""
    from dbsn.data.io import list_images, read_image
    from dbsn.noise import parse_noise
    from dbsn.noise.diagnosis import diagnose, recommend
    import torch

    def load(folder: Path, n: int | None = None):
        return [read_image(path)[0] for path in list_images(folder)[:n]]

    cases = {name: load(datasets / name / "noisy") for name in [*names, "fmdd_samples"]
             if (datasets / name / "noisy").is_dir()}
    if (datasets / "cbsd68").is_dir():
        clean = load(datasets / "cbsd68", 20)
        for spec in ("awgn:25", "awgn:5", "hg:40,10"):
            noise = parse_noise(spec)
            cases[f"cbsd68[:20] + {spec}"] = [noise.add_protocol(torch.from_numpy(x)).numpy() for x in clean]
        cases["cbsd68[:20] clean"] = clean
    print(f"{'images':<26}{'std':>7}{'rho lag 1':>11}{'lag 2':>8}{'length':>8}{'std dark->bright':>18}  verdict")
    for label, images in cases.items():
        d = diagnose(images)
        r = recommend(d)
        print(f"{label:<26}{d.std:>7.2f}{d.rho1:>+11.2f}{0.5 * (d.rho[0][2] + d.rho[2][0]):>+8.2f}"
              f"{d.correlation_length:>8}{d.signal_ratio:>17.2f}x  {r.noise_model}, pd {r.pd_stride}/{r.pd_stride_infer}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS), type=lambda s: s.split(","),
                   help="sets to run; NAME:N scores the first N pairs only (training still reads every noisy image)")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="training budget of the user's path per set (0: no user's path, the bundled models only)")
    p.add_argument("--model", default=None, help="--model of dbsn train (default: its own default)")
    p.add_argument("--ablate", action="store_true", help="also train with --pd-stride 1 (no pixel shuffle)")
    p.add_argument("--previous-fusion", action="store_true",
                   help="also score every stage-1 model fused as before 2026-12-08 (image for a pixel-shuffled "
                        "model, heads for a plain one)")
    p.add_argument("--bm3d", type=int, default=8, help="CBM3D on the first N images of each set (0: none)")
    p.add_argument("--diagnose", action="store_true",
                   help="only the noise diagnosis: of each set's noisy images, of fmdd_samples, and of synthetic "
                        "noise (awgn:25, awgn:5, hg:40,10) on the first 20 CBSD68 images and of those images clean")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    if args.bm3d:
        require_bm3d("or give --bm3d 0")
    sets = [(name.partition(":")[0], int(name.partition(":")[2] or 0) or None) for name in args.sets]
    if any(dataset(args.datasets, name) is None for name, _ in sets):
        return 2
    import dbsn
    from dbsn.data.io import list_images, read_image
    from dbsn.noise.diagnosis import describe, diagnose, recommend

    print(machine())
    if args.diagnose:
        return diagnose_only(args.datasets, [name for name, _ in sets])
    for name, scored in sets:
        folder, out = args.datasets / name, args.out / name
        out.mkdir(parents=True, exist_ok=True)
        pairs_ = pairs(folder)[:scored]
        d = diagnose(read_image(path)[0] for path in list_images(folder / "noisy"))
        print(f"\n== {name}: {len(pairs_)} pairs; noise diagnosis of the noisy images\n{describe(d)}")
        print("   -> " + "; ".join(recommend(d).reasons))

        columns = {"noisy": score(out, "noisy", pairs_, None)}

        def add(label: str, key: str, source: str) -> None:
            denoiser = dbsn.load(source)
            columns[label] = score(out, key, pairs_, lambda y, x: denoiser.denoise(y))
            if args.previous_fusion and denoiser.is_blind_spot:
                fusion = "image" if denoiser.shuffled else "heads"
                before = dbsn.load(source, fusion=fusion)
                columns[f"  {label.split(' (')[0]}, fused as before (--fusion {fusion})"] = score(
                    out, f"{key}_fusion_{fusion}", pairs_, lambda y, x: before.denoise(y))

        for model in BUNDLED:
            add(model, model, model)
        trained = {"dbsn train --noisy": []} if args.minutes > 0 else {}
        if args.ablate:
            trained["--pd-stride 1"] = ["--pd-stride", "1"]
        for label, extra in trained.items():
            run_dir = out / ("run" if not extra else "run_" + "_".join(e.strip("-") for e in extra))
            model = ["--model", args.model] if args.model else []
            train(["dbsn", "-q", "train", "--noisy", str(folder / "noisy"), "--minutes", f"{args.minutes:g}",
                   *model, *extra], run_dir)
            summary = json.loads((run_dir / "run.json").read_text())
            config = summary["model"]
            label = f"{label} ({config['noise_model']}, pd {config.get('pd_stride', 1)}, {summary['steps']} steps)"
            add(label, run_dir.name, str(run_dir / "model.safetensors"))
        if args.bm3d:
            columns["CBM3D (true std)"] = score(out, "cbm3d", pairs_[: args.bm3d], cbm3d)
        names_first = {n.name for n, _ in pairs_[: args.bm3d]}

        mean = lambda rows: statistics.fmean(r["psnr"] for r in rows) if rows else float("nan")  # noqa: E731
        print(f"\n{name}: PSNR (dB) of the 8-bit output against the clean image, mean over {len(pairs_)} images"
              + (f" (the first {scored}; training read all noisy images)" if scored else ""))
        print(f"{'method':<58}{'all':>8}{f'first {args.bm3d}':>10}{'s/image':>9}")
        for label, result in columns.items():
            rows = result["images"]
            head = [r for r in rows if r["image"] in names_first]
            every = mean(rows) if len(rows) == len(pairs_) else float("nan")
            print(f"{label:<58}{every:>8.2f}{mean(head):>10.2f}{result['seconds'] / len(rows):>9.2f}")
        noisy = {r["image"]: r["psnr"] for r in columns["noisy"]["images"]}
        for label, result in columns.items():
            if label.startswith(("dbsn train", "--pd")):
                gains = [r["psnr"] - noisy[r["image"]] for r in result["images"]]
                print(f"{label}: gain over the noisy input per image: median {statistics.median(gains):+.2f}, "
                      f"worst {min(gains):+.2f}, below the input on {sum(g < 0 for g in gains)} of {len(gains)}")
        if name.startswith("sidd"):
            print(f"published on SIDD (other images, a bound): {PUBLISHED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
