"""The README results table: every bundled model on the paper's protocol, BM3D beside it, one run.

    python benchmarks/paper_tables.py --out benchmarks/results.md
    python benchmarks/paper_tables.py --images 4 --no-bm3d      # a quick look
    python benchmarks/paper_tables.py --out benchmarks/results.md --cards   # and into each model card

For each bundled model (``dbsn list``) the rows its noise applies to: gray AWGN models
on BSD68 at sigma 15 / 25 / 50, gray HG models on BSD68 ``hg:40,10``, colour models on
CBSD68 likewise and MG on CBSD68 ``mg``; AWGN rows also on Set12 (gray) and Set14 (colour; its gray
image read as three equal channels), on which no recipe was chosen. The protocol is METHOD.md section 5 (seed 0
per image, noisy input neither clipped nor quantised, output clamped, float PSNR).
Students are also scored with ``--ensemble 8`` (``model x8``: the mean over the eight
mirrored and rotated copies of each noisy image, eight times the time); stage-1 models,
ten times slower, only as they are, with the default fusion measured on the image and with the
paper's, from the heads' variances (``model (heads fusion)``).

BM3D (``pip install bm3d``) runs on the same noisy images: ``bm3d.bm3d`` for gray,
``bm3d.bm3d_rgb`` for colour, told the true noise std for AWGN; for HG and MG, which
BM3D does not model, it is told the root-mean-square noise std of each image. The
paper's numbers (METHOD.md section 7, BSD68 and CBSD68 only) sit in the last columns.

The gray training set train400 holds a crop of 12003.jpg, the source of Set12's 04.png (see
``../shared/datasets/SOURCES.md``): the bundled gray models have seen part of that one image.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from common import DATASETS, MEASURED, TEST_SET, bm3d_denoise, first_images, machine, require_bm3d

# the second test set of each channel count, scored on AWGN only (the paper has no numbers on them)
MORE_SETS = {1: "set12", 3: "set14"}


# (channels, noise) -> (BM3D, D-BSN stage 1, DBSN full), PSNR in dB, from the paper's tables
PAPER = {
    (1, "awgn:15"): (31.07, 31.24, 31.82), (1, "awgn:25"): (28.57, 28.88, 29.38),
    (1, "awgn:50"): (25.62, 25.81, 26.51), (1, "hg:40,10"): (23.84, 29.13, 30.10),
    (3, "awgn:15"): (33.52, 33.56, 34.02), (3, "awgn:25"): (30.71, 30.61, 31.40),
    (3, "awgn:50"): (27.38, 27.41, 28.25), (3, "hg:40,10"): (23.21, 30.53, 31.72),
    (3, "mg"): (24.07, 26.48, 26.81),
}


def rows_for(model) -> list[str]:
    """The noise specs a bundled model is scored on."""
    kind = model.noise.split(":")[0]
    if kind == "awgn":
        return ["awgn:15", "awgn:25", "awgn:50"]
    if kind in ("hg", "hg-indep"):
        return ["hg:40,10"]
    if kind.startswith("mg"):
        return ["mg"] if model.channels == 3 else []
    return []


def cells(model, noises: list[str] | None, sets: list[str] | None) -> list[tuple[str, str]]:
    """``(noise, test set)`` of each row of ``model``, AWGN rows on both test sets of its channels."""
    out = []
    for noise in (n for n in rows_for(model) if not noises or n in noises):
        names = [TEST_SET[model.channels]] + ([MORE_SETS[model.channels]] if noise.startswith("awgn") else [])
        out += [(noise, name) for name in names if not sets or name in sets]
    return out


def bm3d_scores(clean: Path, noise: str, channels: int, n: int | None) -> tuple[float, float]:
    """Mean PSNR and median seconds per image of BM3D on the protocol's noisy images."""
    import torch

    from dbsn.data import list_images, read_image
    from dbsn.metrics import psnr
    from dbsn.noise import parse_noise

    model, scores, seconds = parse_noise(noise), [], []
    for path in list_images(clean)[:n]:
        x = torch.from_numpy(read_image(path, channels=channels)[0])
        y = model.add_protocol(x, seed=0)
        std = float((y - x).pow(2).mean().sqrt()) if model.kind != "awgn" else model.std / 255.0
        start = time.perf_counter()
        out = bm3d_denoise(y, std)
        seconds.append(time.perf_counter() - start)
        scores.append(psnr(out, x))
    return sum(scores) / len(scores), statistics.median(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--images", type=int, help="only the first N images of each set (a quick look)")
    p.add_argument("--no-bm3d", action="store_true")
    p.add_argument("--models", nargs="+", help="only these bundled models (default: all)")
    p.add_argument("--sets", nargs="+", help="only these test sets: bsd68, cbsd68, set12, set14 (default: all)")
    p.add_argument("--noise", nargs="+", help="only these rows, e.g. awgn:25 (default: every row a model applies to)")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.add_argument("--cards", action="store_true", help="also write each model's rows into its model card")
    p.add_argument("--json", type=Path, help="also write every row here unrounded (JSON), BM3D's included")
    p.add_argument("--ensemble", nargs="+", type=int, default=[1, 8],
                   help="score students with each of these self-ensembles (1: as they are; default: 1 8)")
    p.add_argument("--fusions", nargs="+", choices=("local", "image", "heads"), default=["local", "heads"],
                   help="score stage-1 models with each of these fusions (default: local, the default, and heads, "
                        "the paper's)")
    args = p.parse_args()
    if not args.no_bm3d:
        require_bm3d(" (or pass --no-bm3d)")

    import dbsn
    from dbsn.evaluation import evaluate
    from dbsn.hub import bundled_models

    models = [m for m in bundled_models().values() if m.available and (not args.models or m.name in args.models)]
    if not models:
        print("no bundled models with weights installed (see `dbsn list`)", file=sys.stderr)
        return 2
    lines = ["| set | noise | model | stage | PSNR | SSIM | s/img | BM3D here | s/img | ahead of BM3D | paper BM3D | "
             "paper D-BSN | paper DBSN |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    bm3d_cache: dict = {}
    rows_of: dict[str, list[str]] = {}
    records: list[dict] = []
    for model in models:
        for noise, set_name in cells(model, args.noise, args.sets):
            clean = args.datasets / set_name
            if not clean.is_dir():
                print(f"skipping {set_name}: {clean} not found", file=sys.stderr)
                continue
            key = (set_name, noise)
            if not args.no_bm3d and key not in bm3d_cache:
                bm3d_cache[key] = bm3d_scores(clean, noise, model.channels, args.images)
            b = bm3d_cache.get(key)
            # the paper's numbers are for BSD68 and CBSD68 only
            paper = PAPER.get((model.channels, noise), (None,) * 3) if set_name == TEST_SET[model.channels] else (None,) * 3
            cell = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
            images = first_images(clean, args.images)
            variants = ([(e, "local") for e in args.ensemble] if model.stage == "student"
                        else [(1, f) for f in args.fusions])
            for ensemble, fusion in variants:
                # Set14 holds a gray image among colour ones: a colour model reads it as three equal channels
                result = evaluate(dbsn.load(model.name, device="cpu", precision="fp32", ensemble=ensemble,
                                            fusion=fusion), images, noise, channels=model.channels)
                name = model.name + (f" x{ensemble}" if ensemble > 1 else "") + (f" ({fusion} fusion)"
                                                                                  if fusion != "local" else "")
                lines.append(
                    f"| {set_name} | {noise} | {name} | {model.stage} | {cell(result['psnr'])} | "
                    f"{cell(result['ssim'], '.4f')} | {cell(result['seconds_per_image_median'])} | "
                    f"{cell(b[0] if b else None)} | {cell(b[1] if b else None)} | "
                    f"{cell(result['psnr'] - b[0] if b else None, '+.2f')} | {cell(paper[0])} | {cell(paper[1])} | "
                    f"{cell(paper[2])} |"
                )
                print(lines[-1], flush=True)
                records.append({"set": set_name, "noise": noise, "model": model.name, "ensemble": ensemble,
                                "fusion": fusion if model.stage != "student" else None,
                                "stage": model.stage, **{k: result[k] for k in ("psnr", "ssim", "seconds_per_image_median")},
                                "bm3d_psnr": b[0] if b else None, "bm3d_seconds_per_image_median": b[1] if b else None})
                rows_of.setdefault(model.name, []).append(lines[-1])
    stamp = (f"{datetime.date.today().isoformat()} on {machine()}, dbsn {dbsn.__version__}"
             + (f", first {args.images} images only" if args.images else ""))
    command = " ".join(["python", "benchmarks/paper_tables.py", *sys.argv[1:]])
    table = "\n".join(lines) + f"\n\nMeasured {stamp}: `{command}`.\n"
    print("\n" + table)
    from dbsn.data.io import atomic_path

    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(table)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"measured": stamp, "command": command, "rows": records}, indent=2) + "\n")
    if args.cards:
        for model in models:
            if model.card is None or not model.card.is_file() or model.name not in rows_of:
                continue
            text = model.card.read_text()
            head = text.split(MEASURED)[0].rstrip() + "\n\n"
            with atomic_path(model.card) as tmp:
                tmp.write_text(head + MEASURED + "\n\n" + "\n".join(lines[:2] + rows_of[model.name])
                               + f"\n\nMeasured {stamp}: `{command}`.\n")
            print(f"wrote the results into {model.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
