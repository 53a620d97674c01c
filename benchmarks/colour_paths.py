"""Where the colour default's time goes: its three gray passes one by one or batched, channels-last
or contiguous, fp32 or bf16, eager or through ``torch.compile``; seconds and PSNR side by side.

    python benchmarks/colour_paths.py --size 512x768 --repeats 3

Seconds are the median of ``--repeats`` passes over one photo-size mosaic (shared colour training
images, Gaussian noise of std 25, seed 0), untiled. PSNR is the mean over the first ``--images``
DIV2K validation crops (a training set: nothing here is chosen on a test set) with the same noise;
``--sigmas 5,15,25,50`` instead prints, for ``--model`` (gray or colour), the PSNR the shipped path
loses in bf16 at each noise std on the same crops. ``dPSNR`` is against the shipped path in fp32 (``fp32 shipped channels-last``): the three passes one
by one, channels-last, the colour transforms and the first layer in fp32 under bf16.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import dbsn
from common import DATASETS, mosaic
from dbsn.data import list_images, read_image
from dbsn.metrics import psnr
from dbsn.runtime import autocast


def batched_passes(model, y):
    """The opponent student with its three gray passes run as one batch of three, in the autocast
    dtype throughout (the form before the shipped one: passes one by one, transforms in fp32)."""
    o = F.conv2d(y, model.opponent.to(y.dtype)[:, :, None, None] / math.sqrt(3)) + model.offset.to(y.dtype)
    pairs = torch.stack([o, o[:, :1].expand_as(o)], dim=2).flatten(0, 1)
    d = model.net(pairs)["x_hat"][:, 0].unflatten(0, (-1, 3)) - model.offset
    return {"x_hat": F.conv2d(d, model.opponent.to(d.dtype).T[:, :, None, None] * math.sqrt(3))}


def variants(model):
    """name -> (function of y, memory format)."""
    cl, cont = torch.channels_last, torch.contiguous_format

    def plain(precision):
        def run(y):
            with autocast(precision, y.device):
                return model(y)
        return run

    def batched(precision):
        def run(y):
            with autocast(precision, y.device):
                return batched_passes(model, y)
        return run

    return {
        "fp32 shipped channels-last": (plain("fp32"), cl),
        "fp32 shipped contiguous": (plain("fp32"), cont),
        "fp32 batched channels-last": (batched("fp32"), cl),
        "bf16 shipped channels-last": (plain("bf16"), cl),
        "bf16 shipped contiguous": (plain("bf16"), cont),
        "bf16 batched channels-last": (batched("bf16"), cl),
        "fp32 compiled channels-last": ("compile", cl),
    }


def bf16_cost(name: str, sigmas: list[float], images: int) -> None:
    """The shipped path's PSNR in fp32 and what bf16 changes, per noise std, on the DIV2K crops."""
    model = dbsn.load(name, device="cpu", max_memory="1T").model
    channels = int(model.config.get("in_channels", 1))
    clean = [torch.from_numpy(read_image(p, channels=channels)[0])[None]
             for p in list_images(DATASETS / "div2k_val_crop256")[:images]]
    print(f"`{name}` on {images} DIV2K crops: std, PSNR fp32, bf16 - fp32 (dB)")
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(0)
        pairs = [((x + torch.randn(x.shape, generator=gen) * sigma / 255).contiguous(memory_format=torch.channels_last),
                  x) for x in clean]
        scores = {}
        for precision in ("fp32", "bf16"):
            with torch.inference_mode(), autocast(precision, torch.device("cpu")):
                scores[precision] = sum(psnr(model(y)["x_hat"].float().clamp(0, 1), x) for y, x in pairs) / len(pairs)
        print(f"{sigma:>5g}{scores['fp32']:>9.3f}{scores['bf16'] - scores['fp32']:>+9.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="color")
    p.add_argument("--size", default="512x768")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--sigmas", help="instead: the bf16 cost at these noise stds, e.g. 5,15,25,50")
    args = p.parse_args()
    if args.sigmas:
        bf16_cost(args.model, [float(v) for v in args.sigmas.split(",")], args.images)
        return 0
    h, w = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(torch.get_num_threads())
    denoiser = dbsn.load(args.model, device="cpu", max_memory="1T")
    model = denoiser.model
    canvas = mosaic(DATASETS / "div2k_val_crop256", h, w, 3)
    big = torch.from_numpy(canvas + np.random.default_rng(0).normal(0, 25 / 255, canvas.shape).astype(np.float32))[None]
    gen = torch.Generator().manual_seed(0)
    val = []
    for path in list_images(DATASETS / "div2k_val_crop256")[:args.images]:
        x = torch.from_numpy(read_image(path, channels=3)[0])[None]
        val.append((x + torch.randn(x.shape, generator=gen) * 25 / 255, x))
    rows = {}
    for name, (fn, fmt) in variants(model).items():
        extra = ""
        model.to(memory_format=fmt)
        if fn == "compile":
            if args.no_compile:
                continue
            compiled = torch.compile(model)
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    compiled(big.contiguous(memory_format=fmt))
            except Exception as error:  # a missing compiler, say
                print(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}", file=sys.stderr)
                continue
            extra = f"first call {time.perf_counter() - start:.1f} s"
            fn = compiled
        seconds = []
        with torch.inference_mode():
            fn(big[..., :64, :64].contiguous(memory_format=fmt))  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn(big.contiguous(memory_format=fmt))
                seconds.append(time.perf_counter() - start)
            scores = [psnr(fn(y.contiguous(memory_format=fmt))["x_hat"].float().clamp(0, 1), x) for y, x in val]
        rows[name] = (statistics.median(seconds), sum(scores) / len(scores), extra)
        print(f"  measured {name}", file=sys.stderr)
    model.to(memory_format=torch.channels_last)
    base = rows["fp32 shipped channels-last"]
    print(f"\n`{args.model}`, one {h}x{w} pass, median of {args.repeats}; PSNR on {args.images} DIV2K crops, "
          f"sigma 25; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'path':<32}{'s/pass':>8}{'s/MPix':>8}{'x shipped':>10}{'PSNR':>8}{'dPSNR':>8}  note")
    for name, (s, score, extra) in rows.items():
        print(f"{name:<32}{s:>8.2f}{s / (h * w / 1e6):>8.2f}{base[0] / s:>10.2f}{score:>8.2f}"
              f"{score - base[1]:>+8.3f}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
