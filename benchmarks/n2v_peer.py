"""Noise2Void from CAREamics, the peer of ``microscopy.py``: trains on a folder of same-size 16-bit
TIFF images for a wall-clock budget, predicts them, and writes ``OUT/out/NAME.tif`` (16-bit) and
``OUT/run.json``.

It runs in a separate environment that has CAREamics, never in dbsn's: it imports neither dbsn nor
anything of this repository.

    /work/runs/n2v-venv/bin/python benchmarks/n2v_peer.py INPUTS --minutes 10 -o OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", type=Path, help="folder of same-size 16-bit TIFF images, gray or RGB")
    p.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    p.add_argument("--patch-size", type=int, default=64, help="CAREamics' example default")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()
    import careamics
    import torch
    from careamics import CAREamist
    from careamics.config.factories.n2v_factory import create_advanced_n2v_config

    paths = sorted(args.inputs.glob("*.tif"))
    images = [tifffile.imread(path) for path in paths]
    if not images or len({im.shape for im in images}) != 1 or images[0].dtype != np.uint16:
        sys.exit(f"{args.inputs}: expected same-size uint16 TIFF images, got "
                 f"{sorted({(im.shape, str(im.dtype)) for im in images})}")
    stack = np.stack(images).astype(np.float32)
    colour = stack.ndim == 4
    axes = "SYXC" if colour else "SYX"
    torch.manual_seed(args.seed)
    seconds = int(round(args.minutes * 60))
    config = create_advanced_n2v_config(
        experiment_name="n2v", data_type="array", axes=axes, patch_size=[args.patch_size] * 2,
        batch_size=args.batch_size, num_epochs=1_000_000, n_channels=stack.shape[-1] if colour else None,
        independent_channels=False, num_workers=0, seed=args.seed + 1,  # CAREamics takes seeds from 1
        trainer_params={"max_time": f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"})
    args.out.mkdir(parents=True, exist_ok=True)
    careamist = CAREamist(config, work_dir=args.out / "work", enable_progress_bar=False)
    start = time.perf_counter()
    careamist.train(train_data=stack)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predictions = careamist.predict(stack, data_type="array", axes=axes)
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions  # (arrays, sources)
    # one array per source (here one, the stack), in the axes it was given
    predicted = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1, *stack.shape[1:]) for a in predictions])
    predict_seconds = time.perf_counter() - start
    if predicted.shape != stack.shape:
        sys.exit(f"{args.inputs}: predictions of shape {predicted.shape}, expected {stack.shape}")
    (args.out / "out").mkdir(exist_ok=True)
    for path, prediction in zip(paths, predicted):
        target = args.out / "out" / path.name
        tmp = target.with_name(f".{target.name}.tmp")
        tifffile.imwrite(tmp, np.clip(np.round(prediction), 0, 65535).astype(np.uint16))
        os.replace(tmp, target)
    trainer = careamist.trainer
    summary = {"careamics": careamics.__version__, "epochs": trainer.current_epoch, "steps": trainer.global_step,
               "train_seconds": train_seconds, "predict_seconds": predict_seconds, "images": len(paths),
               "patch_size": args.patch_size, "batch_size": args.batch_size}
    (args.out / "run.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
