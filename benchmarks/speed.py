"""Inference speed, peak memory and the PSNR cost of each fast path, all rows in one run.

Every row runs in its own process, so that its peak resident memory is its own. The
noisy inputs are the first ``--images`` images of a test set with seed-0 AWGN (the
evaluation protocol); throughput is the median over ``--repeats`` passes.

    python benchmarks/speed.py --model dbsn --model runs/bsd68_s25/run/model.safetensors \\
        --model runs/bsd68_s25_student/run/model.safetensors --bm3d
    python benchmarks/speed.py --big 4096 --model runs/bsd68_s25/run/model.safetensors
    python benchmarks/speed.py --sizes 0.15,0.4,2,12,24 --model gray --model color --bm3d

``--sizes`` times photo-size images instead: for each size in megapixels, a 3:2 mosaic of the
test set's images (``--set``; CBSD68 for colour models) with the protocol noise, denoised by the
:class:`dbsn.Denoiser` as shipped (the default memory budget, tiled where the image exceeds it)
and in one untiled pass where the model's declared memory for it fits in the memory available;
BM3D/CBM3D runs on the same images up to ``--bm3d-max`` megapixels, one pass each (its cost per
pixel does not depend on the size). Seconds are the median of ``--repeats`` passes.

``--model`` takes a checkpoint, a bundled model name (``dbsn list``) or a registered
name (random weights: speed only, the PSNR column then means nothing). Paths per model: ``fp32 eager`` (plain ``model(y)``
under ``no_grad``, contiguous memory, masks applied per call), ``fp32 fast`` (the
:class:`dbsn.Denoiser`: ``inference_mode``, channels-last, masks frozen once) and
``bf16 fast`` (the same under bf16 autocast; the fusion stays in fp32).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATASETS, bm3d_denoise, machine, mosaic, photo_shape

PATHS = ("fp32 eager", "fp32 fast", "bf16 fast")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model(spec: str):
    import dbsn
    from dbsn.hub import bundled_models, load_model

    if Path(spec).is_file() or spec in bundled_models():
        return load_model(spec)
    return dbsn.create_model(spec).eval()


def _inputs(folder: Path, n: int, channels: int, noise: str):
    import torch

    from dbsn.data import list_images, read_image
    from dbsn.noise import parse_noise

    model = parse_noise(noise)
    pairs = []
    for path in list_images(folder)[:n]:
        x = torch.from_numpy(read_image(path, channels=channels)[0])
        pairs.append((model.add_protocol(x, seed=0), x))
    return pairs


def size_worker(args) -> dict:
    """One ``--sizes`` row: ``args.path`` ("shipped", "one pass" or "bm3d") on one mosaic of ``args.size`` MP."""
    import torch

    import dbsn
    from dbsn.metrics import psnr
    from dbsn.noise import parse_noise
    from dbsn.runtime import available_memory
    from dbsn.tiling import plan_tiles

    spec = args.model[-1]
    channels = 3 if spec.startswith("color") else 1
    denoiser = None
    if args.path != "bm3d":
        denoiser = dbsn.load(spec, device="cpu", max_memory="1T" if args.path == "one pass" else None)
        if args.path == "one pass":
            denoiser.window_pixels = None
        channels = denoiser.channels
    h, w = photo_shape(args.size)
    folder = args.datasets / ("cbsd68" if channels == 3 and args.set == "bsd68" else args.set)
    x = torch.from_numpy(mosaic(folder, h, w, channels))
    y = parse_noise(args.noise).add_protocol(x, seed=0)
    tiles = "-"
    if denoiser is not None:
        tile = denoiser.tile_spec()
        if args.path == "one pass" and h * w * tile.bytes_per_pixel > 0.8 * (available_memory() or 0):
            return {"skipped": f"needs {h * w * tile.bytes_per_pixel / 2**30:.1f} GB"}
        plan = plan_tiles(h, w, tile, denoiser.max_memory, most_pixels=denoiser.window_pixels)
        if plan is not None:
            rows, cols = -(-h // plan[0]), -(-w // plan[1])
            tiles = f"{rows * cols} of {plan[0]}x{plan[1]}"
        denoiser.predict(y[None, :, :64, :64])  # warm-up

        def run():
            return denoiser.predict(y[None])["x_hat"][0]
    else:
        def run():
            return bm3d_denoise(y, float(args.noise.split(":")[1]) / 255.0)
    base = _peak_mb()
    times = []
    for _ in range(1 if denoiser is None else args.repeats):  # BM3D: one pass (its rate does not vary)
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    budget = denoiser.max_memory / 2**20 if denoiser is not None else None
    return {"h": h, "w": w, "seconds": seconds, "peak_mb": _peak_mb(), "before_mb": base, "psnr": psnr(out, x),
            "budget_mb": budget, "tiles": tiles}


def sizes_main(args) -> int:
    """The ``--sizes`` table: seconds per megapixel and peak memory over image sizes, BM3D beside."""
    sizes = [float(v) for v in args.sizes.split(",")]
    rows = [(m, size, path) for m in args.model for size in sizes for path in ("shipped", "one pass")]
    if args.bm3d:
        for channels, name in ((1, "BM3D"), (3, "CBM3D")):
            if any((3 if m.startswith("color") else 1) == channels for m in args.model):
                rows += [(name, size, "bm3d") for size in sizes if size <= args.bm3d_max]
    results = {}
    for model, size, path in rows:
        model_arg = "color" if model == "CBM3D" else model
        cmd = [sys.executable, __file__, "--worker", "--model", model_arg, "--path", path, "--set", args.set,
               "--datasets", str(args.datasets), "--noise", args.noise, "--sizes", args.sizes,
               "--size", str(size), "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model} / {size} MP / {path} failed:\n{done.stderr}", file=sys.stderr)
            continue
        results[(model, size, path)] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  measured {model} / {size} MP / {path}", file=sys.stderr)
    print(f"\n{args.set} mosaics (CBSD68 for colour), {args.noise} (seed 0); median of {args.repeats} passes "
          f"per row (BM3D: one), each row in its own process; {machine()}")
    print(f"{'model':<8}{'MP':>6}{'size':>12}  {'path':<10}{'budget MB':>10}{'tiles':>18}{'s':>9}{'s/MP':>8}"
          f"{'peak MB':>9}{'PSNR':>8}")
    for (model, size, path), r in results.items():
        if "skipped" in r:
            print(f"{model:<8}{size:>6g}{'':>12}  {path:<10}{'':>10}{'':>18}  not run: {r['skipped']}")
            continue
        mp = r["h"] * r["w"] / 1e6
        budget = f"{r['budget_mb']:.0f}" if r["budget_mb"] is not None else "-"
        print(f"{model:<8}{mp:>6.2f}{str(r['h']) + 'x' + str(r['w']):>12}  {path:<10}{budget:>10}{r['tiles']:>18}"
              f"{r['seconds']:>9.2f}{r['seconds'] / mp:>8.2f}{r['peak_mb']:>9.0f}{r['psnr']:>8.2f}")
    return 0


def worker(args) -> dict:
    """One row: time ``args.path`` of ``args.model`` on the noisy images; report speed, memory, PSNR."""
    import torch

    from dbsn.denoiser import Denoiser
    from dbsn.metrics import psnr

    torch.manual_seed(0)
    if args.path == "bm3d":
        pairs = _inputs(args.clean, args.images, 1, args.noise)
        std = float(args.noise.split(":")[1]) / 255.0

        def run(y):
            return bm3d_denoise(y, std)
    else:
        model = _model(args.model[-1])
        channels = int(model.config.get("in_channels", 1))
        pairs = _inputs(args.clean, args.images, channels, args.noise)
        if args.path == "fp32 eager":
            def run(y):
                with torch.no_grad():
                    return model(y[None])["x_hat"][0].clamp(0, 1)
        else:
            denoiser = Denoiser(model, device="cpu", precision=args.path.split()[0], max_memory=args.max_memory)

            def run(y):
                return denoiser.predict(y[None])["x_hat"][0]
    if args.big:
        y = torch.rand(1, args.big, args.big, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        run(y)
        seconds = time.perf_counter() - start
        return {"mpix_s": args.big**2 / seconds / 1e6, "peak_mb": _peak_mb(), "psnr": None, "seconds": seconds}
    run(pairs[0][0])  # warm-up
    rates, per_image, outputs = [], [], []
    for _ in range(args.repeats):
        pixels, seconds, outputs = 0, 0.0, []
        for y, _ in pairs:
            start = time.perf_counter()
            outputs.append(run(y))
            seconds += time.perf_counter() - start
            pixels += y.shape[-1] * y.shape[-2]
        rates.append(pixels / seconds / 1e6)
        per_image.append(seconds / len(pairs))
    scores = [psnr(out, x) for out, (_, x) in zip(outputs, pairs)]
    return {"mpix_s": statistics.median(rates), "peak_mb": _peak_mb(), "psnr": sum(scores) / len(scores),
            "seconds": statistics.median(per_image)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="checkpoint, bundled or registered name (repeatable)")
    p.add_argument("--set", default="bsd68")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--noise", default="awgn:25")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    p.add_argument("--bm3d", action="store_true", help="add BM3D on the same images (pip install bm3d)")
    p.add_argument("--big", type=int, default=0, help="instead: one random gray image of this side, peak memory")
    p.add_argument("--max-memory", default="auto", help="the Denoiser's memory budget (default: as shipped)")
    p.add_argument("--sizes", default="", help="instead: photo-size mosaics of these megapixels (comma-separated)")
    p.add_argument("--bm3d-max", type=float, default=2.0, help="with --sizes: run BM3D up to this many megapixels")
    p.add_argument("--size", type=float, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.clean = args.datasets / args.set
    if args.worker:
        print(json.dumps(size_worker(args) if args.sizes else worker(args)))
        return 0
    if args.sizes:
        return sizes_main(args)
    if not args.big and not args.clean.is_dir():
        print(f"dataset {args.clean} not found", file=sys.stderr)
        return 2
    rows = [(m, path) for m in args.model for path in args.paths.split(",")]
    if args.bm3d:
        rows.append(("BM3D", "bm3d"))
    results = {}
    for model, path in rows:
        cmd = [sys.executable, __file__, "--worker", "--model", model, "--path", path, "--set", args.set,
               "--datasets", str(args.datasets), "--noise", args.noise, "--images", str(args.images),
               "--repeats", str(args.repeats), "--big", str(args.big), "--max-memory", args.max_memory]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{model} / {path} failed:\n{done.stderr}", file=sys.stderr)
            continue
        results[(model, path)] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  measured {Path(model).name if Path(model).is_file() else model} / {path}", file=sys.stderr)

    what = f"one {args.big}x{args.big} gray image" if args.big else f"{args.images} {args.set} images, {args.noise}"
    what += f"; --max-memory {args.max_memory}"
    passes = "one pass" if args.big else f"medians over {args.repeats} repeats"
    print(f"\n{what}; {passes}; every row in its own process")
    print(f"{'model':<34}{'path':<12}{'MPix/s':>8}{'s/img':>8}{'x eager':>9}{'peak MB':>9}{'PSNR':>8}{'dPSNR':>8}")
    for (model, path), r in results.items():
        base = results.get((model, "fp32 eager"))
        speed = f"{r['mpix_s'] / base['mpix_s']:.2f}" if base else "-"
        d = f"{r['psnr'] - base['psnr']:+.3f}" if base and r["psnr"] is not None else "-"
        name = Path(model).parent.parent.name + "/" + Path(model).name if Path(model).is_file() else model
        score = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
        print(f"{name[:33]:<34}{path:<12}{r['mpix_s']:>8.3f}{r['seconds']:>8.2f}{speed:>9}{r['peak_mb']:>9.0f}"
              f"{score:>8}{d:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
