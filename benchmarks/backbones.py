"""Stage 1 from noisy images alone: the two blind-spot backbones at equal CPU budgets.

Two steps, each resumable (a finished cell is read back, not run again):

1. ``--choose``: the recipe of each backbone, chosen on a training set. 68 images drawn from
   ``bsd432`` (BSDS500 minus the 68 test images; 12003.jpg, the source of a Set12 image, left
   out), gray for ``bsd68`` and colour for ``cbsd68``, each with its one fixed seed-0 noisy
   realisation: the same task as the test protocol on images no test set holds. Every candidate
   trains ``--choose-minutes`` and is scored on those 68 images; the best fused PSNR per backbone
   goes to ``recipes.json``.

2. The cells: each backbone, with its chosen recipe (``dbsn train``'s defaults where none was
   chosen), self-supervised on the 68 noisy images of each test set (``--fixed-noise``: the
   protocol's one noisy realisation per image, no clean pixel seen) for each of ``--minutes``,
   then ``dbsn evaluate`` on the same set. One table: PSNR of ``mu`` and of the fused ``x_hat``,
   the noise estimate, steps, steps per second, and BM3D on the same noisy images in the same
   run (its first ``--bm3d`` images; the model's PSNR on those images beside it).

    python benchmarks/backbones.py --choose --sets bsd68 -o /work/runs/backbones
    python benchmarks/backbones.py --sets bsd68,cbsd68 --minutes 15,30,60 --bm3d 8 -o /work/runs/backbones

The budget is wall-clock minutes of ``dbsn train`` (the whole machine): run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from pathlib import Path

from common import DATASETS, bm3d_rows, dataset, machine, run

BACKBONES = ("dbsn_small", "bsn_unet")
CHANNELS = {"bsd68": 1, "cbsd68": 3}
CHOICE_SET, CHOICE_IMAGES, LEFT_OUT = "bsd432", 68, ("12003.jpg",)

# The candidates of --choose: the options they add to `dbsn train` (each names every option it sets).
# "before" is what `dbsn train` did by default before the recipe below became its default.
RECIPES = {
    "before": {"precision": "fp32", "lr": "3e-4", "phase-split": "0.6,0.1,0.3", "trace-weight": "1"},
    "bf16 lr1e-3 .9/.1/0": {"precision": "bf16", "lr": "1e-3", "phase-split": "0.9,0.1,0", "trace-weight": "0.1"},
    "bf16 lr1e-3 .8/.2/0": {"precision": "bf16", "lr": "1e-3", "phase-split": "0.8,0.2,0", "trace-weight": "0.1"},
    "bf16 lr2e-3 .9/.1/0": {"precision": "bf16", "lr": "2e-3", "phase-split": "0.9,0.1,0", "trace-weight": "0.1"},
}
CANDIDATES = {  # backbone: the recipes tried
    "dbsn_small": list(RECIPES),
    "bsn_unet": ["bf16 lr1e-3 .9/.1/0", "bf16 lr2e-3 .9/.1/0"],
}


def choice_folder(datasets: Path, seed: int = 0) -> Path:
    """A temporary folder linking CHOICE_IMAGES images of the choice set, drawn with ``seed``."""
    from dbsn.data import list_images

    paths = [p for p in list_images(datasets / CHOICE_SET) if p.name not in LEFT_OUT]
    picked = sorted(random.Random(seed).sample(paths, CHOICE_IMAGES))
    folder = Path(tempfile.mkdtemp(prefix="dbsn-choice-"))
    for path in picked:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def recipe_args(recipe: dict) -> list[str]:
    return [arg for key, value in recipe.items() for arg in (f"--{key}", value)]


def cell(out: Path, clean: Path, channels: int, noise: str, backbone: str, recipe: dict, minutes: float) -> dict:
    """Train ``backbone`` with ``recipe`` on the fixed-noise images of ``clean`` for ``minutes``, then
    evaluate on the same images; the results (read back when ``out`` holds them already)."""
    result_path = out / "evaluate.json"
    if not result_path.exists():
        run_dir = out / "run"
        if not (run_dir / "model.safetensors").exists():
            resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
            run(["dbsn", "-q", "train", "--clean", str(clean), "--channels", str(channels), "--noise", noise,
                 "--fixed-noise", "--model", backbone, "--minutes", f"{minutes:g}", *recipe_args(recipe),
                 "--val-fraction", "0", "--val-every", "250", *resume, "-o", str(run_dir)])
        run(["dbsn", "-q", "evaluate", "--model", str(run_dir / "model.safetensors"), "--clean", str(clean),
             "--channels", str(channels), "--noise", noise, "--json", str(result_path)])
    result = json.loads(result_path.read_text())
    summary = json.loads((out / "run" / "run.json").read_text())
    with open(out / "run" / "log.csv") as fh:
        phases = [row["phase"] for row in csv.DictReader(fh)]
    steps, seconds = summary["steps"], summary["elapsed_s"]
    return {"psnr_mu": result["psnr_mu"], "psnr": result["psnr"], "noise_std_est": result["noise_std_est"],
            "steps": steps, "steps_per_s": steps / seconds if seconds else float("nan"),
            "d-bsn_steps": sum(p != "heads" for p in phases), "images": result["images"]}


def choose(args, noise: str) -> dict:
    """The recipe per backbone and channel count, chosen on the choice set; writes ``recipes.json``."""
    folder = choice_folder(args.datasets)
    chosen = {}
    for name in args.sets:
        channels = CHANNELS[name]
        rows = []
        for backbone in args.backbones:
            for label in CANDIDATES[backbone]:
                tag = label.replace(" ", "_").replace("/", "-")
                r = cell(args.out / "choose" / f"c{channels}" / backbone / tag, folder, channels, noise, backbone,
                         RECIPES[label], args.choose_minutes)
                rows.append((backbone, label, r))
        print(f"\nrecipe choice, {CHOICE_IMAGES} {CHOICE_SET} images ({'gray' if channels == 1 else 'colour'}), "
              f"{noise}, {args.choose_minutes:g} minutes each, {machine()}")
        print(f"{'backbone':<12}{'recipe':<22}{'steps':>7}{'steps/s':>9}{'mu':>8}{'x_hat':>8}{'std_est':>9}")
        for backbone, label, r in rows:
            print(f"{backbone:<12}{label:<22}{r['steps']:>7}{r['steps_per_s']:>9.2f}{r['psnr_mu']:>8.2f}"
                  f"{r['psnr']:>8.2f}{r['noise_std_est']:>9.2f}")
        for backbone in args.backbones:
            best = max((row for row in rows if row[0] == backbone), key=lambda row: row[2]["psnr"])
            chosen[f"{backbone}/{channels}"] = best[1]
            print(f"chosen for {backbone}: {best[1]} ({best[2]['psnr']:.2f} dB)")
    path = args.out / "recipes.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **chosen}, indent=2))
    return {**old, **chosen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="bsd68", type=lambda s: s.split(","), help="bsd68, cbsd68 or both")
    p.add_argument("--backbones", default=",".join(BACKBONES), type=lambda s: s.split(","))
    p.add_argument("--minutes", default="15,30,60", type=lambda s: [float(m) for m in s.split(",")])
    p.add_argument("--noise", default="awgn:25")
    p.add_argument("--choose", action="store_true", help="choose each backbone's recipe on the choice set")
    p.add_argument("--choose-minutes", type=float, default=5.0)
    p.add_argument("--bm3d", type=int, default=8, help="BM3D on the first N images of each set (0: none)")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    unknown = [s for s in args.sets if s not in CHANNELS] + [b for b in args.backbones if b not in CANDIDATES]
    if unknown:
        sys.exit(f"--sets takes {', '.join(CHANNELS)} and --backbones {', '.join(CANDIDATES)}; got {unknown}")
    if any(dataset(args.datasets, name) is None for name in [*args.sets, CHOICE_SET]):
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.choose:
        choose(args, args.noise)
        return 0
    recipes_path = args.out / "recipes.json"
    chosen = json.loads(recipes_path.read_text()) if recipes_path.exists() else {}

    for name in args.sets:
        channels, clean = CHANNELS[name], args.datasets / name
        rows = []
        for backbone in args.backbones:
            label = chosen.get(f"{backbone}/{channels}")
            recipe = RECIPES[label] if label else {}  # dbsn train's defaults
            for minutes in args.minutes:
                r = cell(args.out / name / backbone / f"{minutes:g}min", clean, channels, args.noise, backbone,
                         recipe, minutes)
                rows.append((backbone, label or "defaults", minutes, r))
        bm3d = bm3d_rows(clean, args.noise, channels, args.bm3d) if args.bm3d else []
        names = {b["image"] for b in bm3d}
        mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
        print(f"\n{name}, {args.noise}, self-supervised on its {len(rows[0][3]['images'])} noisy images, "
              f"{machine()}")
        print(f"{'backbone':<12}{'recipe':<22}{'min':>5}{'steps':>7}{'D-BSN':>7}{'steps/s':>9}{'mu':>8}{'x_hat':>8}"
              f"{'std_est':>9}{f'x_hat {len(bm3d)}':>10}")
        for backbone, label, minutes, r in rows:
            first = mean([im["psnr"] for im in r["images"] if im["image"] in names])
            print(f"{backbone:<12}{label:<22}{minutes:>5g}{r['steps']:>7}{r['d-bsn_steps']:>7}{r['steps_per_s']:>9.2f}"
                  f"{r['psnr_mu']:>8.2f}{r['psnr']:>8.2f}{r['noise_std_est']:>9.2f}{first:>10.2f}")
        if bm3d:
            print(f"{'BM3D' if channels == 1 else 'CBM3D':<12}{'':<22}{'':>5}{'':>7}{'':>7}{'':>9}{'':>8}{'':>8}{'':>9}"
                  f"{mean([b['psnr'] for b in bm3d]):>10.2f}"
                  f"   ({sorted(b['seconds'] for b in bm3d)[len(bm3d) // 2]:.1f} s/image)")
        print("curve (fused PSNR against minutes):")
        for backbone in args.backbones:
            points = [f"{m:g} min {r['psnr']:.2f}" for b, _, m, r in rows if b == backbone]
            print(f"  {backbone:<12}" + ", ".join(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
