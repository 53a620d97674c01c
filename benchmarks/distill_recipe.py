"""Stage-2 recipe on a 2-core CPU: distil a stage-1 teacher into a light student, then score both.

The noisy folder is the test set with its fixed seed-0 noise (the evaluation
protocol's noisy images, written as float32 TIFF so that nothing is clipped or
quantised); the clean folders are unpaired and disjoint from the test set.

    python benchmarks/distill_recipe.py --teacher runs/bsd68_s25/run/model.safetensors \\
        --set bsd68 --clean train400 bsd432 --minutes 30 -o runs/bsd68_s25_student
    python benchmarks/distill_recipe.py --teacher runs/cbsd68_s25/run/model.safetensors \\
        --set cbsd68 --clean bsd432 div2k_val_crop256 sun_hays80 --minutes 30 -o runs/cbsd68_s25_student

Both models then run `dbsn evaluate` on the same set in the same run; the table
gives their PSNR and their wall time for the whole set.

``--weight-noisy 0.1,0`` trains one student per weight of the teacher's targets (the rest the same) and
scores them side by side; ``--init`` starts each from a student (fine-tuning), and ``--extra`` passes
further ``dbsn distill`` options. ``--set choice`` takes the 68 bsd432 training images of
``backbones.py --choose`` (BSDS500 minus the test images) in place of a test set, for choosing::

    python benchmarks/distill_recipe.py --teacher gray-stage1 --init gray --set choice \
        --clean train400 div2k_val_crop256 sun_hays80 --weight-noisy 0.1,0 --minutes 8 \
        --extra "--synthetic-levels noisy --widths 48,96,192 --depth 3 --lr 1e-4" -o /work/runs/weight_noisy
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from common import DATASETS, run

def write_noisy_set(clean: Path, noise: str, channels: int, out: Path) -> None:
    """The protocol's noisy images (seed 0 per image) as float32 TIFF files."""
    import tifffile
    import torch

    from dbsn.data import list_images, read_image
    from dbsn.data.io import atomic_path
    from dbsn.noise import parse_noise

    out.mkdir(parents=True, exist_ok=True)
    model = parse_noise(noise)
    for path in list_images(clean):
        x, _ = read_image(path, channels=channels)
        y = model.add_protocol(torch.from_numpy(x), seed=0).numpy()
        with atomic_path(out / (path.stem + ".tiff")) as tmp:
            tifffile.imwrite(tmp, y[0] if channels == 1 else y.transpose(1, 2, 0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a stage-1 checkpoint, weights file or bundled name")
    p.add_argument("--set", default="bsd68", help="a test set, or 'choice': 68 bsd432 training images")
    p.add_argument("--init", help="start each student from these weights (fine-tuning)")
    p.add_argument("--weight-noisy", default=None, type=lambda s: [float(w) for w in s.split(",")],
                   help="one student per weight of the teacher's targets (default: dbsn distill's)")
    p.add_argument("--extra", default="", help="further dbsn distill options, one string")
    p.add_argument("--clean", nargs="+", default=["train400", "bsd432"])
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--noise", default="awgn:25")
    p.add_argument("--student", default="mwcnn_small")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--precision", default="bf16")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    from dbsn.train import load_model

    channels = int(load_model(args.teacher).config["in_channels"])
    if args.set == "choice":
        from backbones import choice_folder

        test = choice_folder(args.datasets)
    else:
        test = args.datasets / args.set
    noisy = args.out / "noisy"
    if not noisy.is_dir():
        write_noisy_set(test, args.noise, channels, noisy)
    students = {}
    for weight in args.weight_noisy or [None]:
        run_dir = args.out / ("run" if weight is None else f"run_w{weight:g}")
        if not (run_dir / "model.safetensors").exists():
            run(["dbsn", "-q", "distill", "--teacher", str(args.teacher), "--noisy", str(noisy),
                 "--clean", *[str(args.datasets / c) for c in args.clean], "--student", args.student,
                 "--minutes", str(args.minutes), "--precision", args.precision,
                 *(["--init", args.init] if args.init else []),
                 *(["--weight-noisy", f"{weight:g}"] if weight is not None else []), *shlex.split(args.extra),
                 "-o", str(run_dir)])
        label = "student" if weight is None else f"student, w {weight:g}"
        students[label] = run_dir / "model.safetensors"
    rows = {}
    models = {"teacher (stage 1)": args.teacher, **({"student as it starts": args.init} if args.init else {}),
              **students}
    for name, model in models.items():
        out_json = args.out / f"evaluate_{name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}.json"
        if out_json.exists():
            wall = float("nan")
        else:
            wall = run(["dbsn", "-q", "evaluate", "--model", str(model), "--clean", str(test),
                        "--noise", args.noise, "--channels", str(channels), "--json", str(out_json)])
        result = json.loads(out_json.read_text())
        rows[name] = (result, wall, sum(r["seconds"] for r in result["images"]))
    print(f"\n{'model':<24}{'PSNR':>8}{'SSIM':>8}{'model s/set':>13}{'wall s':>9}")
    for name, (result, wall, model_s) in rows.items():
        print(f"{name:<24}{result['psnr']:>8.2f}{result['ssim']:>8.4f}{model_s:>13.1f}{wall:>9.1f}")
    t, _, t_s = rows["teacher (stage 1)"]
    for label in students:
        st, _, s_s = rows[label]
        print(f"\n{label} - teacher PSNR: {st['psnr'] - t['psnr']:+.2f} dB; speed-up on the whole set: "
              f"{t_s / s_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
