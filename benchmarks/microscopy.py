"""Microscopy, the user's case: fluorescence images learned from their noisy images alone, 16-bit in
and out, against Noise2Void (CAREamics) trained for the same minutes on the same images.

The noisy images of ``fmdd_samples`` are written as 16-bit TIFF (value x 257, as a microscope's
files come) into ``OUT/input/<group>``, one group per channel count (gray, rgb), since one model
learns one kind of image. For each group:

- dbsn, the user's path: ``dbsn train --noisy OUT/input/<group> --minutes M`` with no other option
  (the noise diagnosis chooses the noise heads and the pixel-shuffle stride), then
  ``dbsn denoise ... --model RUN/model.safetensors`` with its defaults: 16-bit TIFF out;
- Noise2Void from CAREamics, trained by ``n2v_peer.py`` for the same M minutes on the same 16-bit
  files and predicting them, run with ``--peer-python``, the interpreter of a separate environment
  that has CAREamics (it is not a dependency of dbsn)::

      python3 -m venv /work/runs/n2v-venv
      /work/runs/n2v-venv/bin/pip install careamics==0.3.5   # brings its own torch, several GB

- with ``--also OPTIONS``, a further dbsn line with those options added (``--also '--pd-stride 1'``
  overrides the diagnosis's stride): a row to compare, never a choice made on these images;
- the noisy input, and (with ``--bm3d``) BM3D/CBM3D told each image's true noise std, an upper
  bound of what it can do.

PSNR is computed on the 16-bit outputs scaled to [0, 1] against the clean image; the clean images
are read only to score. Every cell is resumable: a finished training run or output is kept.

    python benchmarks/microscopy.py --minutes 10 --peer-python /work/runs/n2v-venv/bin/python -o /work/runs/fmdd

The budget is wall-clock minutes of training (the whole machine): run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path


from common import DATASETS, bm3d_true_std, dataset, machine, require_bm3d, run, train

GROUPS = {1: "gray", 3: "rgb"}


def stage_inputs(folder: Path, out: Path) -> dict[str, list[str]]:
    """Write each noisy image of ``folder / "noisy"`` as a 16-bit TIFF under ``out / group``; the names per group."""
    from dbsn.data.io import list_images, read_image, write_image

    groups: dict[str, list[str]] = {}
    for path in list_images(folder / "noisy"):
        y = read_image(path)[0]
        group = GROUPS[y.shape[0]]
        target = out / group / f"{path.stem}.tif"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(target, y, bits=16)
        groups.setdefault(group, []).append(path.stem)
    return groups


def scores(outputs: Path, folder: Path, names: list[str]) -> dict[str, float]:
    """PSNR of ``outputs / NAME.tif`` against ``folder / "clean" / NAME.*``, per name."""
    import torch

    from dbsn.data.io import list_images, read_image
    from dbsn.metrics import psnr

    clean = {p.stem: p for p in list_images(folder / "clean")}
    result = {}
    for name in names:
        x_hat, info = read_image(outputs / f"{name}.tif")
        if info.bits != 16:
            raise SystemExit(f"{outputs / name}.tif: expected a 16-bit output, got {info.bits} bits")
        x = read_image(clean[name], channels=x_hat.shape[0])[0]
        result[name] = psnr(torch.from_numpy(x_hat), torch.from_numpy(x))
    return result


def bm3d_outputs(inputs: Path, folder: Path, names: list[str], out: Path) -> None:
    """BM3D/CBM3D of each 16-bit input, told its true noise std (``std(noisy - clean)``), as 16-bit TIFF."""
    import torch

    from dbsn.data.io import list_images, read_image, write_image

    clean = {p.stem: p for p in list_images(folder / "clean")}
    for name in names:
        target = out / f"{name}.tif"
        if target.exists():
            continue
        y = read_image(inputs / f"{name}.tif")[0]
        x = read_image(clean[name], channels=y.shape[0])[0]
        out.mkdir(parents=True, exist_ok=True)
        write_image(target, bm3d_true_std(torch.from_numpy(y), torch.from_numpy(x)).numpy(), bits=16)


def dbsn_line(inputs: Path, run_dir: Path, names: list[str], args, extra: list[str]) -> tuple[dict, int]:
    """The user's path on ``inputs``: train (resumed where a checkpoint is left), then denoise; its config and steps."""
    train(["dbsn", "-q", "train", "--noisy", str(inputs), "--minutes", f"{args.minutes:g}", "--seed", str(args.seed),
           *extra], run_dir)
    if not all((run_dir / "out" / f"{n}.tif").exists() for n in names):
        run(["dbsn", "-q", "denoise", str(inputs), "--model", str(run_dir / "model.safetensors"),
             "--overwrite", "-o", str(run_dir / "out")])
    summary = json.loads((run_dir / "run.json").read_text())
    return summary["model"], summary["steps"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="fmdd_samples", help="a folder of the datasets with noisy/ and clean/")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each method per group")
    p.add_argument("--peer-python", type=Path, default=None,
                   help="python of the environment that has CAREamics (without it, Noise2Void is skipped)")
    p.add_argument("--bm3d", action="store_true", help="also BM3D/CBM3D told the true noise std")
    p.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                   help="a further dbsn line, trained with these options added (e.g. '--pd-stride 1', which "
                        "overrides the diagnosis); repeatable. Rows to compare, not choices: these are test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("-o", "--out", type=Path, required=True, help="results folder (outside the work tree)")
    args = p.parse_args()
    if args.bm3d:
        require_bm3d("or leave out --bm3d")
    folder = dataset(args.datasets, args.set)
    if folder is None:
        return 2
    if args.peer_python is not None and not args.peer_python.is_file():
        sys.exit(f"--peer-python {args.peer_python}: no such interpreter; create the environment the docstring shows")
    from dbsn.data.io import list_images, read_image
    from dbsn.noise.diagnosis import describe, diagnose, recommend

    print(machine())
    peer = Path(__file__).with_name("n2v_peer.py")
    groups = stage_inputs(folder, args.out / "input")
    table: dict[str, dict[str, float]] = {}
    notes = []
    for group, names in groups.items():
        inputs = args.out / "input" / group
        d = diagnose(read_image(path)[0] for path in list_images(inputs))
        print(f"\n== {args.set} {group}: {len(names)} images; noise diagnosis of the noisy images\n{describe(d)}")
        print("   -> " + "; ".join(recommend(d).reasons))
        table.setdefault("noisy input", {}).update(scores(inputs, folder, names))

        for extra in ["", *args.also]:
            label = "dbsn train --noisy, dbsn denoise" + (f" ({extra})" if extra else "")
            run_dir = args.out / ("dbsn_" + "_".join([group, *extra.replace("-", "").split()]))
            config, steps = dbsn_line(inputs, run_dir, names, args, shlex.split(extra))
            notes.append(f"{label} {group}: {config['noise_model']} heads, pd stride {config.get('pd_stride', 1)}, "
                         f"{steps} steps")
            table.setdefault(label, {}).update(scores(run_dir / "out", folder, names))

        if args.peer_python is not None:
            peer_dir = args.out / f"n2v_{group}"
            if not all((peer_dir / "out" / f"{n}.tif").exists() for n in names):
                run([str(args.peer_python), str(peer), str(inputs), "--minutes", f"{args.minutes:g}",
                     "--seed", str(args.seed), "-o", str(peer_dir)])
            summary = json.loads((peer_dir / "run.json").read_text())
            notes.append(f"Noise2Void {group}: CAREamics {summary['careamics']}, {summary['epochs']} epochs, "
                         f"{summary['steps']} steps, {summary['train_seconds'] / 60:.1f} min")
            table.setdefault("Noise2Void (CAREamics)", {}).update(scores(peer_dir / "out", folder, names))
        if args.bm3d:
            bm3d_outputs(inputs, folder, names, args.out / f"bm3d_{group}")
            table.setdefault("BM3D/CBM3D (true std)", {}).update(scores(args.out / f"bm3d_{group}", folder, names))

    names = [n for group in groups.values() for n in group]
    print(f"\n{args.set}: PSNR (dB) of the 16-bit output against the clean image; {args.minutes:g} training "
          "minutes per method and group")
    print(f"{'method':<50}" + "".join(f"{n[:22]:>24}" for n in names) + f"{'mean':>8}")
    for label, row in table.items():
        print(f"{label:<50}" + "".join(f"{row[n]:>24.2f}" for n in names) + f"{statistics.fmean(row.values()):>8.2f}")
    print("\n".join(notes))
    gains = {n: table["dbsn train --noisy, dbsn denoise"][n] - table["noisy input"][n] for n in names}
    print(f"dbsn over the noisy input per image: worst {min(gains.values()):+.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
