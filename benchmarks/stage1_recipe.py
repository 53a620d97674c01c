"""Stage-1 recipe on a 2-core CPU: self-supervised training on the noisy test set, then the paper's protocol.

The paper's protocol allows self-supervised training on the noisy test images:
every image gets its one fixed seed-0 noisy realisation (``--fixed-noise``), the
model never sees a clean pixel, and ``dbsn evaluate`` then scores the same set.

    python benchmarks/stage1_recipe.py --set bsd68 --minutes 30 -o runs/bsd68_s25
    python benchmarks/stage1_recipe.py --set cbsd68 --minutes 30 -o runs/cbsd68_s25

With ``--heads-from MODEL`` only the heads phase runs (its share of ``--minutes``, from
``--phase-split``), from fresh heads on the D-BSN of MODEL: the same recipe with a given
``mu``, to tell the heads' run-to-run spread from that of ``mu``.

With ``--bm3d N`` the first N images are also denoised by BM3D (``pip install bm3d``)
in the same run, on the same noisy images, for a side-by-side baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import DATASETS, bm3d_rows, dataset, run


def fresh_heads(model_path: Path, out: Path) -> Path:
    """A stage-1 model with the D-BSN of ``model_path`` and heads as initialised with seed 0 (as after phase 1)."""
    import torch

    from dbsn.nn import create_model
    from dbsn.hub import load_model, save_weights

    trained = load_model(model_path)
    config = dict(trained.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # dbsn train's initialisation
        model = create_model(config.pop("name"), **config)
    model.bsn.load_state_dict(trained.bsn.state_dict())
    return save_weights(out, model)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="bsd68", help="folder name under shared/datasets (bsd68, cbsd68, ...)")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--noise", default="awgn:25")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--model", default="dbsn_small")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--trace-weight", default="0.1")
    p.add_argument("--phase-split", default="0.9,0.1,0")
    p.add_argument("--ema", default="0", help="weight averaging decay (0: off; 0.995 measured no better)")
    p.add_argument("--heads-from", type=Path, help="train only the heads, on the D-BSN of this stage-1 model")
    p.add_argument("--bm3d", type=int, default=0, help="also run BM3D on the first N images")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    clean = dataset(args.datasets, args.set)
    if clean is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    if not (run_dir / "model.safetensors").exists():
        minutes, split, init = args.minutes, args.phase_split, []
        if args.heads_from:
            minutes = args.minutes * float(split.split(",")[1])
            split, init = "0,1,0", ["--init", str(fresh_heads(args.heads_from, args.out / "mu.safetensors"))]
        run(["dbsn", "-q", "train", "--clean", str(clean), "--noise", args.noise, "--fixed-noise",
             "--model", args.model, "--minutes", str(minutes), "--lr", args.lr,
             "--precision", args.precision, "--trace-weight", args.trace_weight, "--phase-split", split,
             "--ema", args.ema, *init,
             "--val-fraction", "0", "--val-every", "250", "-o", str(run_dir)])
    result_path = args.out / "evaluate.json"
    run(["dbsn", "-q", "evaluate", "--model", str(run_dir / "model.safetensors"), "--clean", str(clean),
         "--noise", args.noise, "--json", str(result_path)])
    result = json.loads(result_path.read_text())
    level = float(args.noise.split(":")[1]) if args.noise.startswith("awgn:") else None

    print()
    print(f"{'':<28}{'value':>10}")
    print(f"{'psnr_noisy':<28}{result['psnr_noisy']:>10.2f}")
    print(f"{'psnr_mu':<28}{result['psnr_mu']:>10.2f}")
    print(f"{'psnr (fused x_hat)':<28}{result['psnr']:>10.2f}")
    print(f"{'ssim':<28}{result['ssim']:>10.4f}")
    print(f"{'noise_std_est':<28}{result['noise_std_est']:>10.2f}")
    print(f"{'s/image (median)':<28}{result['seconds_per_image_median']:>10.2f}")
    checks = {"fused - mu >= 0.5 dB": result["psnr"] - result["psnr_mu"] >= 0.5,
              "fused > 27.0 dB": result["psnr"] > 27.0}
    if level is not None:
        checks[f"noise_std_est within 10% of {level:g}"] = abs(result["noise_std_est"] - level) <= 0.1 * level
    for name, ok in checks.items():
        print(f"check {name}: {'yes' if ok else 'NO'}")

    if args.bm3d:
        rows = bm3d_rows(clean, args.noise, int(result["model"].get("in_channels", 1)), args.bm3d)
        names = {r["image"] for r in rows}
        ours = [r for r in result["images"] if r["image"] in names]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        print(f"\nsame {len(rows)} images, same noisy inputs:")
        print(f"{'method':<12}{'PSNR':>8}{'s/image':>10}")
        print(f"{'BM3D':<12}{mean([r['psnr'] for r in rows]):>8.2f}{sorted(r['seconds'] for r in rows)[len(rows) // 2]:>10.2f}")
        print(f"{'dbsn x_hat':<12}{mean([r['psnr'] for r in ours]):>8.2f}"
              f"{sorted(r['seconds'] for r in ours)[len(ours) // 2]:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
