"""Stage-1 models across noise levels: PSNR of mu, of the fused x_hat, and the estimated level.

    python benchmarks/noise_levels.py runs/bundled/gray-stage1/model.safetensors \
        runs/bundled/gray-stage1r/model.safetensors --images 4

For a model trained on a range of levels (``awgn:5-50``) this shows whether its noise
estimator tells the levels apart, and what the fusion gains at each. The paper's
protocol (seed 0 per image, unclipped noisy input) on the first images of BSD68 (gray
models) or CBSD68 (colour).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import DATASETS, first_images


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="stage-1 checkpoints, weights files or bundled names")
    p.add_argument("--levels", default="5,15,25,50", help="AWGN stds in 0-255 units")
    p.add_argument("--images", type=int, default=4, help="the first N test images")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    args = p.parse_args()

    import dbsn
    from dbsn.evaluation import evaluate

    print(f"{'model':<36}{'std':>5}{'noisy':>8}{'mu':>8}{'x_hat':>8}{'std est':>9}")
    for name in args.models:
        denoiser = dbsn.load(name, device="cpu", precision="fp32")
        if not denoiser.is_blind_spot:
            print(f"{name}: not a stage-1 model", file=sys.stderr)
            return 2
        test_set = args.datasets / ("bsd68" if denoiser.channels == 1 else "cbsd68")
        if not test_set.is_dir():
            print(f"{test_set} not found", file=sys.stderr)
            return 2
        images = first_images(test_set, args.images)
        label = Path(name).parent.name if Path(name).exists() else name
        for level in args.levels.split(","):
            r = evaluate(denoiser, images, f"awgn:{level}")
            print(f"{label:<36}{level:>5}{r['psnr_noisy']:>8.2f}{r['psnr_mu']:>8.2f}{r['psnr']:>8.2f}"
                  f"{r['noise_std_est']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
