"""Stage 1 from noisy images alone: the two blind-spot backbones at equal CPU budgets.

Two steps, each resumable (a finished cell is read back, not run again):

1. ``--choose``: the recipe of each backbone, chosen on a training set. 68 images drawn from
   ``bsd432`` (BSDS500 minus the 68 test images; 12003.jpg, the source of a Set12 image, left
   out), gray for ``bsd68`` and colour for ``cbsd68``, each with its one fixed seed-0 noisy
   realisation: the same task as the test protocol on images no test set holds. Every candidate
   trains ``--choose-minutes`` and is scored on those 68 images; the best fused PSNR per backbone
   goes to ``recipes.json``.

2. The cells: each backbone, with its chosen recipe (the choices recorded in ``CHOSEN`` where the
   results folder has no ``recipes.json``; for colour, the gray choice where no colour one ran),
   self-supervised on the 68 noisy images of each test set (``--fixed-noise``: the protocol's one
   noisy realisation per image, no clean pixel seen) for each of ``--minutes``,
   then ``dbsn evaluate`` on the same set. One table: PSNR of ``mu``, of the paper's fusion with the
   heads' variances (``--fusion heads``) and of the fused ``x_hat`` (the default, measured fusion),
   the noise estimate, steps, steps per second, and BM3D on the same noisy images in the same
   run (its first ``--bm3d`` images; the model's PSNR on those images beside it).

``--from-bundled`` adds the line a user gets by fine-tuning the bundled stage-1 model of the set's
channels (``dbsn train --init gray-stage1`` or ``color-stage1``) on the noisy images, with its own
learning rates chosen the same way; its 0-minute cell is the bundled model as it comes.

    python benchmarks/backbones.py --choose --sets bsd68 -o /work/runs/backbones
    python benchmarks/backbones.py --sets bsd68,cbsd68 --minutes 15,30,60 --bm3d 8 -o /work/runs/backbones
    python benchmarks/backbones.py --choose --sets bsd68 --backbones '' --from-bundled -o /work/runs/backbones
    python benchmarks/backbones.py --sets bsd68 --backbones '' --from-bundled --minutes 15 -o /work/runs/backbones

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

from common import DATASETS, bm3d_rows, dataset, machine, run, train

BACKBONES = ("dbsn_small", "bsn_unet")
CHANNELS = {"bsd68": 1, "cbsd68": 3}
# --from-bundled: the bundled stage-1 model the cells of each channel count go on from (a dbsn_small
# whose noise estimator reads y - mu), trained on clean images with synthetic noise of std 5 to 50
BUNDLED_STAGE1 = {1: "gray-stage1", 3: "color-stage1"}
CHOICE_SET, CHOICE_IMAGES, LEFT_OUT = "bsd432", 68, ("12003.jpg",)

# The candidates of --choose: the options they add to `dbsn train` (each names every option it sets).
# "before" is what `dbsn train` did by default before the recipe below became its default.
RECIPES = {
    "before": {"precision": "fp32", "lr": "3e-4", "phase-split": "0.6,0.1,0.3", "trace-weight": "1"},
    "bf16 lr1e-3 .9/.1/0": {"precision": "bf16", "lr": "1e-3", "phase-split": "0.9,0.1,0", "trace-weight": "0.1"},
    "bf16 lr1e-3 .8/.2/0": {"precision": "bf16", "lr": "1e-3", "phase-split": "0.8,0.2,0", "trace-weight": "0.1"},
    "bf16 lr2e-3 .9/.1/0": {"precision": "bf16", "lr": "2e-3", "phase-split": "0.9,0.1,0", "trace-weight": "0.1"},
    # for fine-tuning a trained model: both learning rates lower, in the default ratio of 1 to 3
    "bf16 lr3e-4 .8/.2/0": {"precision": "bf16", "lr": "3e-4", "lr-heads": "1e-3", "phase-split": "0.8,0.2,0",
                            "trace-weight": "0.1"},
    "bf16 lr1e-4 .8/.2/0": {"precision": "bf16", "lr": "1e-4", "lr-heads": "3e-4", "phase-split": "0.8,0.2,0",
                            "trace-weight": "0.1"},
}
# What --choose picked (68 bsd432 images, gray, awgn:25, 5 minutes each; the README's choice tables),
# for a results folder without a recipes.json of its own. A colour line takes its gray choice until a
# colour --choose has run: its label then says so.
CHOSEN = {"dbsn_small/1": "bf16 lr1e-3 .8/.2/0", "bsn_unet/1": "bf16 lr1e-3 .9/.1/0",
          "from gray-stage1/1": "bf16 lr1e-4 .8/.2/0"}
CANDIDATES = {  # backbone: the recipes tried
    "dbsn_small": ["before", "bf16 lr1e-3 .9/.1/0", "bf16 lr1e-3 .8/.2/0", "bf16 lr2e-3 .9/.1/0"],
    "bsn_unet": ["bf16 lr1e-3 .9/.1/0", "bf16 lr2e-3 .9/.1/0"],
    "from-bundled": ["bf16 lr1e-3 .8/.2/0", "bf16 lr3e-4 .8/.2/0", "bf16 lr1e-4 .8/.2/0"],
}


def lines(args, channels: int) -> list[tuple[str, str, tuple[str, ...], list[str]]]:
    """What is compared: ``(name, backbone, extra dbsn train options, the recipes --choose tries)``, each
    backbone from scratch and with ``--from-bundled`` the bundled stage-1 model fine-tuned."""
    found = [(backbone, backbone, (), CANDIDATES[backbone]) for backbone in args.backbones]
    if args.from_bundled:
        start = BUNDLED_STAGE1[channels]
        found.append((f"from {start}", "dbsn_small", ("--init", start, "--estimator-input", "residual"),
                      CANDIDATES["from-bundled"]))
    return found


def choice_folder(datasets: Path, seed: int = 0) -> Path:
    """A temporary folder linking CHOICE_IMAGES images of the choice set, drawn with ``seed``."""
    from dbsn.data import list_images

    paths = [p for p in list_images(datasets / CHOICE_SET) if p.name not in LEFT_OUT]
    picked = sorted(random.Random(seed).sample(paths, CHOICE_IMAGES))
    folder = Path(tempfile.mkdtemp(prefix="dbsn-choice-"))
    for path in picked:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def chosen_recipe(chosen: dict, line: str, channels: int) -> str | None:
    """The label of the recipe chosen for ``line`` at ``channels``: its own choice, else (colour) the gray
    one, marked "(gray)"; None where nothing was chosen (``dbsn train``'s defaults)."""
    gray_line = line.replace(BUNDLED_STAGE1[channels], BUNDLED_STAGE1[1])
    if f"{line}/{channels}" in chosen:
        return chosen[f"{line}/{channels}"]
    return f"{chosen[f'{gray_line}/1']} (gray)" if f"{gray_line}/1" in chosen else None


def recipe_args(recipe: dict) -> list[str]:
    return [arg for key, value in recipe.items() for arg in (f"--{key}", value)]


def cell(out: Path, clean: Path, channels: int, noise: str, backbone: str, recipe: dict, minutes: float,
         extra: tuple[str, ...] = ()) -> dict:
    """Train ``backbone`` with ``recipe`` (and the ``dbsn train`` options ``extra``) on the fixed-noise
    images of ``clean`` for ``minutes``, then evaluate on the same images; the results (read back when
    ``out`` holds them already). At 0 minutes the ``--init`` model of ``extra`` is evaluated as it is."""
    result_path = out / "evaluate.json"
    untrained = minutes == 0
    if untrained and "--init" not in extra:
        raise ValueError("a 0-minute cell needs a model to start from (--from-bundled)")
    run_dir = out / "run"
    weights = extra[extra.index("--init") + 1] if untrained else str(run_dir / "model.safetensors")
    if not result_path.exists():
        if not untrained:
            train(["dbsn", "-q", "train", "--clean", str(clean), "--channels", str(channels), "--noise", noise,
                   "--fixed-noise", "--model", backbone, "--minutes", f"{minutes:g}", *recipe_args(recipe),
                   "--val-fraction", "0", "--val-every", "250", *extra], run_dir)
        out.mkdir(parents=True, exist_ok=True)
        run(["dbsn", "-q", "evaluate", "--model", weights, "--clean", str(clean),
             "--channels", str(channels), "--noise", noise, "--json", str(result_path)])
    heads_path = out / "evaluate_heads.json"  # the paper's fusion, with the heads' own variances, beside it
    if not heads_path.exists():
        run(["dbsn", "-q", "evaluate", "--model", weights, "--clean", str(clean), "--channels", str(channels),
             "--noise", noise, "--fusion", "heads", "--json", str(heads_path)])
    heads = json.loads(heads_path.read_text())["psnr"]
    result = json.loads(result_path.read_text())
    if untrained:
        return {"psnr_mu": result["psnr_mu"], "psnr": result["psnr"], "psnr_heads": heads,
                "noise_std_est": result["noise_std_est"], "steps": 0, "steps_per_s": float("nan"), "d-bsn_steps": 0, "images": result["images"]}
    summary = json.loads((run_dir / "run.json").read_text())
    with open(run_dir / "log.csv") as fh:
        phases = [row["phase"] for row in csv.DictReader(fh)]
    steps, seconds = summary["steps"], summary["elapsed_s"]
    return {"psnr_mu": result["psnr_mu"], "psnr": result["psnr"], "psnr_heads": heads,
            "noise_std_est": result["noise_std_est"], "steps": steps, "steps_per_s": steps / seconds if seconds else float("nan"),
            "d-bsn_steps": sum(p != "heads" for p in phases), "images": result["images"]}


def choose(args, noise: str) -> dict:
    """The recipe per backbone and channel count, chosen on the choice set; writes ``recipes.json``."""
    folder = choice_folder(args.datasets)
    chosen = {}
    for name in args.sets:
        channels = CHANNELS[name]
        rows = []
        for line, backbone, extra, tried in lines(args, channels):
            folder_of = args.out / "choose" / f"c{channels}" / line.replace(" ", "-")
            if extra:  # the model it starts from, as it comes
                rows.append((line, "as bundled", cell(folder_of / "0min", folder, channels, noise, backbone, {}, 0,
                                                      extra)))
            for label in tried:
                tag = label.replace(" ", "_").replace("/", "-")
                r = cell(folder_of / tag, folder, channels, noise, backbone, RECIPES[label], args.choose_minutes,
                         extra)
                rows.append((line, label, r))
        print(f"\nrecipe choice, {CHOICE_IMAGES} {CHOICE_SET} images ({'gray' if channels == 1 else 'colour'}), "
              f"{noise}, {args.choose_minutes:g} minutes each, {machine()}")
        print(f"{'backbone':<19}{'recipe':<22}{'steps':>7}{'steps/s':>9}{'mu':>8}{'x_hat':>8}{'std_est':>9}")
        for backbone, label, r in rows:
            print(f"{backbone:<19}{label:<22}{r['steps']:>7}{r['steps_per_s']:>9.2f}{r['psnr_mu']:>8.2f}"
                  f"{r['psnr']:>8.2f}{r['noise_std_est']:>9.2f}")
        for backbone, *_ in lines(args, channels):
            best = max((row for row in rows if row[0] == backbone and row[1] in RECIPES),
                       key=lambda row: row[2]["psnr"])
            chosen[f"{backbone}/{channels}"] = best[1]
            print(f"chosen for {backbone}: {best[1]} ({best[2]['psnr']:.2f} dB)")
    path = args.out / "recipes.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **chosen}, indent=2))
    return {**old, **chosen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="bsd68", type=lambda s: s.split(","), help="bsd68, cbsd68 or both")
    p.add_argument("--backbones", default=",".join(BACKBONES), type=lambda s: [b for b in s.split(",") if b],
                   help="the backbones trained from scratch ('' with --from-bundled: that line alone)")
    p.add_argument("--minutes", default="15,30,60", type=lambda s: [float(m) for m in s.split(",")])
    p.add_argument("--noise", default="awgn:25")
    p.add_argument("--choose", action="store_true", help="choose each backbone's recipe on the choice set")
    p.add_argument("--choose-minutes", type=float, default=5.0)
    p.add_argument("--from-bundled", action="store_true",
                   help="also fine-tune the bundled stage-1 model (gray-stage1, color-stage1) on the noisy images")
    p.add_argument("--bm3d", type=int, default=8, help="BM3D on the first N images of each set (0: none)")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    unknown = [s for s in args.sets if s not in CHANNELS] + [b for b in args.backbones if b not in BACKBONES]
    if not args.backbones and not args.from_bundled:
        unknown.append("no backbone")
    if unknown:
        sys.exit(f"--sets takes {', '.join(CHANNELS)} and --backbones {', '.join(CANDIDATES)}; got {unknown}")
    if any(dataset(args.datasets, name) is None for name in [*args.sets, CHOICE_SET]):
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.choose:
        choose(args, args.noise)
        return 0
    recipes_path = args.out / "recipes.json"
    chosen = {**CHOSEN, **(json.loads(recipes_path.read_text()) if recipes_path.exists() else {})}

    for name in args.sets:
        channels, clean = CHANNELS[name], args.datasets / name
        rows = []
        for line, backbone, extra, _ in lines(args, channels):
            label = chosen_recipe(chosen, line, channels)
            recipe = RECIPES[label.removesuffix(" (gray)")] if label else {}  # dbsn train's defaults
            # the scratch lines keep their folders of before: <set>/<backbone>/<minutes>min
            folder_of = args.out / name / (line.replace(" ", "-") if extra else backbone)
            for minutes in ([0.0] if extra else []) + args.minutes:
                r = cell(folder_of / f"{minutes:g}min", clean, channels, args.noise, backbone, recipe, minutes, extra)
                rows.append((line, label or "defaults" if minutes else "as bundled", minutes, r))
        bm3d = bm3d_rows(clean, args.noise, channels, args.bm3d) if args.bm3d else []
        names = {b["image"] for b in bm3d}
        mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
        print(f"\n{name}, {args.noise}, self-supervised on its {len(rows[0][3]['images'])} noisy images, "
              f"{machine()}")
        print(f"{'backbone':<19}{'recipe':<28}{'min':>5}{'steps':>7}{'D-BSN':>7}{'steps/s':>9}{'mu':>8}{'heads':>8}"
              f"{'x_hat':>8}{'std_est':>9}{f'x_hat {len(bm3d)}':>10}")
        for backbone, label, minutes, r in rows:
            first = mean([im["psnr"] for im in r["images"] if im["image"] in names])
            print(f"{backbone:<19}{label:<28}{minutes:>5g}{r['steps']:>7}{r['d-bsn_steps']:>7}{r['steps_per_s']:>9.2f}"
                  f"{r['psnr_mu']:>8.2f}{r['psnr_heads']:>8.2f}{r['psnr']:>8.2f}{r['noise_std_est']:>9.2f}{first:>10.2f}")
        if bm3d:
            print(f"{'BM3D' if channels == 1 else 'CBM3D':<19}{'':<28}{'':>5}{'':>7}{'':>7}{'':>9}{'':>8}{'':>8}{'':>8}{'':>9}"
                  f"{mean([b['psnr'] for b in bm3d]):>10.2f}"
                  f"   ({sorted(b['seconds'] for b in bm3d)[len(bm3d) // 2]:.1f} s/image)")
        print("curve (fused PSNR against minutes):")
        for line in dict.fromkeys(row[0] for row in rows):
            points = [f"{m:g} min {r['psnr']:.2f}" for b, _, m, r in rows if b == line]
            print(f"  {line:<19}" + ", ".join(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
