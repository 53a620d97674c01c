"""Which student gives the most PSNR per training CPU-hour: validation PSNR against training minutes.

Every candidate is one `dbsn distill` run of ``--minutes`` that keeps its weights every ``--every``
minutes (``--snapshot-minutes``). Each kept state is then scored, with the evaluation protocol (seed 0
per image), on validation images carved from the training sets at sigma 15, 25 and 50, and BM3D runs on
the same noisy images in the same run. No test set is read.

- Validation: ``--val`` images drawn with a fixed seed from ``bsd432`` (BSDS500 less its 68 test
  images) and as many from ``div2k_val_crop256`` (photographs, buildings among them: structure that
  repeats). 12003.jpg, the source of a Set12 image, and train400's crop of it are left out of both.
- Training: the clean training sets (train400, bsd432, div2k_val_crop256, sun_hays80) less those
  images, with synthetic noise at the levels the teacher (the bundled ``gray-stage1``) measures on a
  noisy copy of train400's first ``--noisy-images`` images (``dbsn add-noise`` at ``awgn:5-50``, seed 0),
  as the bundled students are trained (`benchmarks/bundled_models.py`).

    python benchmarks/students.py -o /work/runs/students                       # every candidate
    python benchmarks/students.py -o /work/runs/students --candidates base,l1 --minutes 12 --every 3
    python benchmarks/students.py -o /work/runs/students --candidates base --also gray /work/runs/gray-long/run

``--also`` scores more students on the same images: a bundled model or weights file (one row), or
a `dbsn distill` run folder (one point per snapshot, as the candidates), for instance a long run
that went on from a bundled student. It is how a run is compared with the model it would replace.
The bundled students trained on all four sets, these validation images among them, which favours them.

A finished run or score is read back, not computed again, and a stopped run resumes: run it again.
The budget is wall-clock minutes of the whole machine: run nothing else meanwhile. It writes
``curves.json`` and ``curves.png`` (PSNR at sigma 25 against minutes) into ``-o``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from common import DATASETS, bm3d_rows, machine, require_bm3d, run, train

TRAIN_SETS = ("train400", "bsd432", "div2k_val_crop256", "sun_hays80")
VAL_SETS = ("bsd432", "div2k_val_crop256")
LEFT_OUT = ("12003.jpg", "test_020.png")  # the source of Set12's 04.png, and train400's crop of it
SIGMAS = (15, 25, 50)
TEACHER = "gray-stage1"
NOISE = "awgn:5-50"
# what every candidate shares: the bundled gray student's recipe (benchmarks/bundled_models.py, STUDENT)
BASE = {"student": "mwcnn_small", "widths": "48,96,192", "depth": "3", "batch-size": "16", "patch-size": "96",
        "lr": "1e-3", "precision": "bf16", "weight-noisy": "0", "noisy-share": "0", "loss": "l2"}
# name: what the candidate changes from BASE
CANDIDATES = {
    "base": {},
    "l1": {"loss": "l1"},
    "patch64 b36": {"patch-size": "64", "batch-size": "36"},  # as many pixels per step, more patches
    "wide deep": {"widths": "64,128,256", "depth": "4"},      # the colour default's size
    "4 levels": {"widths": "48,96,192,256"},                 # a fourth Haar level: twice the reach, at 1/256
    "attention 8": {"attention": "8"},                       # blocks of 64 x 64 pixels at the coarsest level
    "unet": {"student": "unet_small"},
    "lr 2e-3": {"lr": "2e-3"},
    # the bundled gray student trained on (`--init`) under a fresh, lower cosine schedule, EMA weights:
    # a long run of a winner, scored beside the model it would replace (`--also gray`)
    "gray on": {"init": "gray", "lr": "2.5e-4", "ema": "0.995", "seed": "1"},
    "gray on attention 8": {"init": "gray", "attention": "8", "lr": "2.5e-4", "ema": "0.995", "seed": "1"},
}


def validation_images(datasets: Path, per_set: int, seed: int = 0) -> list[Path]:
    """``per_set`` images of each of VAL_SETS, drawn with ``seed`` (LEFT_OUT never)."""
    from dbsn.data import list_images

    picked = []
    for name in VAL_SETS:
        paths = [p for p in list_images(datasets / name) if p.name not in LEFT_OUT]
        picked += sorted(random.Random(f"{seed}/{name}").sample(paths, per_set))
    return picked


def link_folder(paths: list[Path], prefix: str) -> Path:
    """A temporary folder of links to ``paths``, each named after its set and file (names stay unique)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for path in paths:
        (folder / f"{path.parent.name}__{path.name}").symlink_to(path.resolve())
    return folder


def training_images(datasets: Path, held_out: list[Path]) -> list[Path]:
    from dbsn.data import list_images

    out = {p.resolve() for p in held_out}
    return [p for name in TRAIN_SETS for p in list_images(datasets / name)
            if p.resolve() not in out and p.name not in LEFT_OUT]


def options_of(candidate: dict) -> list[str]:
    return [arg for key, value in {**BASE, **candidate}.items() for arg in (f"--{key}", value)]


def train_candidate(out: Path, clean: Path, noisy: Path, candidate: dict, minutes: float, every: float) -> Path:
    run_dir = out / "run"
    train(["dbsn", "-q", "distill", "--teacher", TEACHER, "--noisy", str(noisy), "--clean", str(clean),
           "--synthetic-levels", "noisy", "--minutes", f"{minutes:g}", "--snapshot-minutes", f"{every:g}",
           "--val-every", "1000", *options_of(candidate)], run_dir)
    return run_dir


def score(weights: Path | str, val: Path) -> dict:
    """Mean PSNR per sigma of ``weights`` on the images of ``val`` (the protocol, in fp32), and seconds per image."""
    import dbsn

    denoiser = dbsn.load(weights, device="cpu", precision="fp32")  # the same numbers on any CPU
    rows = {s: dbsn.evaluate(denoiser, val, f"awgn:{s}", channels=1) for s in SIGMAS}
    return {**{str(s): r["psnr"] for s, r in rows.items()},
            "s_per_image": statistics.median(r["seconds_per_image_median"] for r in rows.values())}


def cached(path: Path, key: str, compute) -> dict:
    """``compute()``, kept under ``key`` in the JSON file ``path`` and read back from it on later runs."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        cache[key] = compute()
        path.write_text(json.dumps(cache, indent=1))
    return cache[key]


def curve(run_dir: Path, val: Path) -> list[dict]:
    """One point per snapshot (and the final weights): minutes, steps, PSNR per sigma; cached per file."""
    from safetensors import safe_open

    def snapshot_point(path: Path) -> dict:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
        return {"minutes": float(meta["elapsed_s"]) / 60, "step": int(meta["step"]), **score(path, val)}

    cache_path = run_dir / "scores_fp32.json"
    points = [cached(cache_path, path.name, lambda: snapshot_point(path))
              for path in sorted((run_dir / "snapshots").glob("step-*.safetensors"))]
    summary = json.loads((run_dir / "run.json").read_text())
    final = cached(cache_path, "final", lambda: {"minutes": summary["elapsed_s"] / 60, "step": summary["steps"],
                                                 **score(run_dir / "model.safetensors", val)})
    if not points or points[-1]["step"] != summary["steps"]:
        points.append(final)
    return points


def bm3d_baseline(val: Path) -> dict:
    """BM3D told the true std, on the same noisy validation images: mean PSNR per sigma."""
    from dbsn.data import list_images

    n = len(list_images(val))
    return {str(s): statistics.mean(r["psnr"] for r in bm3d_rows(val, f"awgn:{s}", 1, n)) for s in SIGMAS}


def plot(curves: dict[str, list[dict]], bm3d: dict | None, path: Path, sigma: str = "25") -> None:
    """PSNR at ``sigma`` against minutes, one line per candidate, BM3D as a dashed level (Pillow only)."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127)]
    w, h, left, right, top, bottom = 760, 460, 60, 190, 20, 40
    values = [p[sigma] for pts in curves.values() for p in pts] + ([bm3d[sigma]] if bm3d else [])
    lo, hi = min(values) - 0.1, max(values) + 0.1
    t_max = max(p["minutes"] for pts in curves.values() for p in pts)
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)

    def xy(minutes, db):
        return (left + (w - left - right) * minutes / t_max, top + (h - top - bottom) * (hi - db) / (hi - lo))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(6):
        db = lo + (hi - lo) * k / 5
        draw.text((4, xy(0, db)[1] - 6), f"{db:.2f}", fill="black")
        minutes = t_max * k / 5
        draw.text((xy(minutes, lo)[0] - 8, h - bottom + 4), f"{minutes:.3g}", fill="black")
    draw.text((left + 120, h - 16), f"training minutes; PSNR (dB) at sigma {sigma} on the validation images",
              fill="black")
    if bm3d:
        y = xy(0, bm3d[sigma])[1]
        for x in range(left, w - right, 12):
            draw.line([(x, y), (x + 6, y)], fill="black")
        draw.text((w - right + 6, y - 6), "BM3D", fill="black")
    for i, (name, pts) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        draw.line([xy(p["minutes"], p[sigma]) for p in pts], fill=colour, width=2)
        draw.text((w - right + 6, top + 16 * i + 20), name, fill=colour)
    image.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default=",".join(c for c in CANDIDATES if "init" not in CANDIDATES[c]),
                   type=lambda s: s.split(","), help="default: every candidate that starts from random weights")
    p.add_argument("--minutes", type=float, default=12.0, help="training budget of each candidate")
    p.add_argument("--every", type=float, default=3.0, help="minutes between two scored snapshots")
    p.add_argument("--val", type=int, default=12, help="validation images from each of bsd432 and div2k")
    p.add_argument("--noisy-images", type=int, default=48, help="noisy train400 images the levels come from")
    p.add_argument("--also", nargs="+", default=[], metavar="MODEL",
                   help="more students to score: bundled names, weights files or distill run folders")
    p.add_argument("--no-bm3d", action="store_true")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    missing = [s for s in TRAIN_SETS if not (args.datasets / s).is_dir()]
    if missing:
        sys.exit(f"training sets {missing} not found in {args.datasets}; give --datasets")
    if not args.no_bm3d:
        require_bm3d(", or pass --no-bm3d")
    from dbsn.data import list_images

    held_out = validation_images(args.datasets, args.val)
    val = link_folder(held_out, "dbsn-val-")
    clean = link_folder(training_images(args.datasets, held_out), "dbsn-train-")
    noisy = args.out / "noisy"
    if not noisy.is_dir():
        sources = [q for q in list_images(args.datasets / "train400") if q.name not in LEFT_OUT][:args.noisy_images]
        first = link_folder(sources, "dbsn-noisy-src-")
        run(["dbsn", "-q", "add-noise", str(first), "--channels", "1", "--noise", NOISE, "--seed", "0",
             "-o", str(noisy)])
    curves = {}
    for name in args.candidates:
        tag = name.replace(" ", "_")
        run_dir = train_candidate(args.out / tag, clean, noisy, CANDIDATES[name], args.minutes, args.every)
        curves[name] = curve(run_dir, val)
    models = {}
    for name in args.also:
        if Path(name, "run.json").is_file():
            curves[name] = curve(Path(name), val)
        else:
            models[name] = cached(args.out / "also_fp32.json", name, lambda: score(name, val))
    bm3d_path = args.out / "bm3d.json"
    bm3d = None
    if not args.no_bm3d:
        if not bm3d_path.exists():
            bm3d_path.write_text(json.dumps(bm3d_baseline(val)))
        bm3d = json.loads(bm3d_path.read_text())

    print(f"\nvalidation: {len(held_out)} images ({args.val} each of {', '.join(VAL_SETS)}), awgn seed 0 per image; "
          f"training: {len(list_images(clean))} clean images, levels from {TEACHER}; {machine()}")
    print(f"{'candidate':<14}{'steps':>7}{'steps/s':>9}{'s/img':>7}  PSNR at sigma 25 by minute"
          f"{'':<10}  final at 15 / 25 / 50")
    for name, pts in curves.items():
        last = pts[-1]
        by_minute = " ".join(f"{p['minutes']:.1f}:{p['25']:.2f}" for p in pts)
        print(f"{name:<14}{last['step']:>7}{last['step'] / (60 * last['minutes']):>9.2f}{last['s_per_image']:>7.2f}  "
              f"{by_minute:<36}  {last['15']:.2f} / {last['25']:.2f} / {last['50']:.2f}")
    for name, row in models.items():
        print(f"{name:<14}{'':>16}{row['s_per_image']:>7.2f}  {'':<36}  "
              f"{row['15']:.2f} / {row['25']:.2f} / {row['50']:.2f}")
    if bm3d:
        print(f"{'BM3D':<14}{'':>23}  {'(true std)':<36}  {bm3d['15']:.2f} / {bm3d['25']:.2f} / {bm3d['50']:.2f}")
    (args.out / "curves.json").write_text(json.dumps({"curves": curves, "models": models, "bm3d": bm3d, "machine": machine(),
                                                      "validation": [str(p) for p in held_out]}, indent=1))
    plot(curves, bm3d, args.out / "curves.png")
    print(f"wrote {args.out / 'curves.json'} and {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
