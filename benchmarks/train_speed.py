"""Training speed, fp32 against bf16, and the PSNR each reaches after the same number of steps.

    python benchmarks/train_speed.py --steps 600 -o runs/train_speed

Both runs train the same model from the same seed on the BSD68 noisy images (fixed
seed-0 noise, as in the stage-1 recipe), one after the other on the same machine; then
each model is scored with the evaluation protocol on the first ``--images`` images.
The table gives steps per second (median over the logged steps) beside the PSNR, so
that a speed-up that costs quality shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from common import DATASETS, dataset, first_images, run

def steps_per_second(log_csv: Path) -> float:
    """Median of 1 / (seconds per step) over the logged steps, skipping the first 10 (warm-up)."""
    rows = list(csv.DictReader(log_csv.open()))
    times = [float(r["elapsed_s"]) for r in rows]
    gaps = [b - a for a, b in zip(times[10:], times[11:]) if b > a]
    return 1.0 / statistics.median(gaps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="bsd68")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--model", default="dbsn_small")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--images", type=int, default=12, help="images scored after training")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    clean = dataset(args.datasets, args.set)
    if clean is None:
        return 2
    subset = first_images(clean, args.images)
    rows = {}
    for precision in args.precisions.split(","):
        run_dir = args.out / precision
        if not (run_dir / "model.safetensors").exists():
            run(["dbsn", "-q", "train", "--clean", str(clean), "--noise", "awgn:25", "--fixed-noise",
                 "--model", args.model, "--steps", str(args.steps), "--lr", "1e-3", "--trace-weight", "0.1",
                 "--phase-split", "0.8,0.2,0", "--precision", precision, "--val-fraction", "0",
                 "--val-every", str(max(args.steps // 4, 1)), "--device", "cpu", "-o", str(run_dir)])
        result_path = run_dir / "evaluate.json"
        run(["dbsn", "-q", "evaluate", "--model", str(run_dir / "model.safetensors"), "--clean", str(subset),
             "--noise", "awgn:25", "--device", "cpu", "--json", str(result_path)])
        result = json.loads(result_path.read_text())
        rows[precision] = (steps_per_second(run_dir / "log.csv"), result)
    print(f"\n{args.model}, {args.steps} steps (batch 8, 96 x 96), scored on {args.images} {args.set} images")
    print(f"{'precision':<10}{'steps/s':>9}{'x fp32':>8}{'PSNR mu':>9}{'PSNR x_hat':>12}")
    base = rows.get("fp32", (None,))[0]
    for precision, (sps, result) in rows.items():
        ratio = f"{sps / base:.2f}" if base else "-"
        print(f"{precision:<10}{sps:>9.3f}{ratio:>8}{result['psnr_mu']:>9.2f}{result['psnr']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
