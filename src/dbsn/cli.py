"""Command line: ``dbsn train | distill | evaluate | denoise | demo | models | list | export``.

Parse, then call one library function.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import fields
from pathlib import Path

from .data.io import MAX_PIXELS
from .data.patches import MAX_PATCH, MIN_SIDE
from .runtime import ENSEMBLES, INFERENCE_PRECISIONS, PRECISIONS

log = logging.getLogger("dbsn")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
WORKERS_HELP = ("processes that draw training batches (0: this process); a GPU needs a few, "
                "a small CPU machine none")
CACHE_HELP = ("keep the decoded training images in memory up to this many GB (default: half the available "
              "memory); a larger set is decoded from its files on demand, which --workers hides")
ENSEMBLE_HELP = ("average the outputs on this many mirrored and rotated copies of each image: that many "
                 "times slower, about 0.1 dB better with 8")
MEMORY_HELP = ("working memory for the model, e.g. 512M or 4G (default: a quarter of the memory available, "
               "from 256M to 8G); larger images are denoised in tiles with the same result")
EMA_HELP = "average the weights with this decay (e.g. 0.995; 0: off); validation and the saved weights use the average"
PATCH_HELP = f"side of the square training patches ({MIN_SIDE} to {MAX_PATCH}, at most twice the largest image side)"
OVERWRITE_RUN_HELP = ("start a new run in an -o that holds one: its checkpoint.pt, model.safetensors, log.csv and "
                      "run.json are removed first")


def _number(kind, low=None, high=None, low_open=False, what="", high_open=False):
    """An argparse type: a finite ``kind`` (int or float) in [low, high] (``low_open``: above ``low``,
    ``high_open``: below ``high``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or ('an integer' if kind is int else 'a number')}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            bounds = (f"above {low}" if low_open else f"at least {low}") if low is not None else ""
            if high is not None:
                top = f"below {high}" if high_open else f"at most {high}"
                bounds = f"{bounds} and {top}" if bounds else top
            raise argparse.ArgumentTypeError(f"expected {what or 'a value'} {bounds}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1, what="an integer")
NON_NEGATIVE_INT = _number(int, 0, what="an integer")
POSITIVE = _number(float, 0, low_open=True, what="a number")
NON_NEGATIVE = _number(float, 0, what="a number")
FRACTION = _number(float, 0, 1, what="a number")
BELOW_ONE = _number(float, 0, 1, what="a number", high_open=True)  # [0, 1): --ema, --val-fraction
PATCH = _number(int, MIN_SIDE, MAX_PATCH, what="a patch size")


def _memory(text: str) -> str:
    from .tiling import parse_memory

    try:
        parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _budget(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=POSITIVE_INT, help="number of optimisation steps")
    group.add_argument("--minutes", type=POSITIVE, help="wall-clock budget in minutes")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dbsn", description="Self-supervised image denoising (DBSN).")
    parser.add_argument("--version", action="version", version=f"dbsn {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a stage-1 model (D-BSN, noise estimator) from noisy images")
    t.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, model.safetensors, log.csv")
    data = t.add_argument_group("data (give --noisy, or --clean with --noise)")
    data.add_argument("--noisy", nargs="+", help="folder(s) of real noisy images (no clean images needed)")
    data.add_argument("--clean", nargs="+", help="folder(s) of clean images to add synthetic noise to")
    data.add_argument("--noise", help="synthetic noise: awgn:25, awgn:5-50, hg:40,10, hg-indep:40,10, mg")
    data.add_argument("--fixed-noise", action="store_true",
                      help="one fixed seed-0 noisy realisation per image, as in the evaluation protocol")
    data.add_argument("--channels", type=int, choices=(1, 3), help="force gray (1) or colour (3)")
    m = t.add_argument_group("model")
    m.add_argument("--model", default="dbsn_small", help="registered model name (see `dbsn models`)")
    m.add_argument("--width", type=POSITIVE_INT, help="feature channels c (paper: 96)")
    m.add_argument("--blocks", type=POSITIVE_INT, help="dilated blocks per branch B (paper: 8)")
    m.add_argument("--mask-mode", choices=("mask", "trimmed"), help="centre-masked convolution variant")
    m.add_argument("--estimator-input", choices=("paper", "residual"),
                   help="what CNN_est reads for AWGN and MG: y (paper, the default) or y - mu (residual: needed "
                        "for a range of noise levels)")
    m.add_argument("--init", help="start from these weights (checkpoint, weights file or bundled name): fine-tuning")
    m.add_argument("--noise-model", choices=("awgn", "hg", "mg"),
                   help="noise heads; default: the kind of --noise, or hg for real noisy images")
    o = t.add_argument_group("optimisation")
    _budget(o)
    o.add_argument("--schedule", choices=("three-phase", "joint"), default="three-phase",
                   help="three-phase: L2 on mu, heads with mu frozen, joint (default); joint: official")
    o.add_argument("--phase-split", default="0.6,0.1,0.3", help="shares of the budget for the three phases")
    o.add_argument("--loss", choices=("dbsn", "nll"), default="dbsn", help="constrained DBSN loss or plain NLL")
    o.add_argument("--trace-weight", type=FRACTION, default=1.0,
                   help="weight of the DBSN loss's gap over the NLL: 1 is the paper's loss, 0 the NLL")
    o.add_argument("--batch-size", type=POSITIVE_INT, default=8)
    o.add_argument("--patch-size", type=PATCH, default=96, help=PATCH_HELP)
    o.add_argument("--lr", type=NON_NEGATIVE, default=3e-4, help="Adam learning rate of the D-BSN")
    o.add_argument("--lr-heads", type=NON_NEGATIVE, default=3e-3, help="Adam learning rate of the two heads")
    o.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="autocast for the D-BSN (bf16: CPUs with AVX-512 BF16 and GPUs; fp16: GPUs, with a "
                        "gradient scaler); the heads and the losses stay in fp32")
    o.add_argument("--ema", type=BELOW_ONE, default=0.0, help=EMA_HELP)
    o.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help=WORKERS_HELP)
    o.add_argument("--cache-gb", type=NON_NEGATIVE, help=CACHE_HELP)
    o.add_argument("--heads-cache-gb", type=NON_NEGATIVE, default=1.0,
                   help="heads phase: compute the frozen D-BSN once on large crops, up to this many GB, and "
                        "train the heads on them (0: a D-BSN pass per heads step)")
    o.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    o.add_argument("--val-fraction", type=BELOW_ONE, default=0.1, help="share of images held out for validation")
    o.add_argument("--val-every", type=POSITIVE_INT, default=200, help="validate every this many steps")
    o.add_argument("--save-every", type=POSITIVE_INT, default=500, help="write checkpoint.pt every this many steps")
    o.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:1, mps")
    t.add_argument("--resume", action="store_true", help="continue the run in -o from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN_HELP)

    k = sub.add_parser("distill", help="stage 2: distil a stage-1 model into a fast ordinary denoiser")
    k.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, model.safetensors, log.csv")
    k.add_argument("--teacher", help="stage-1 checkpoint or weights from `dbsn train`")
    k.add_argument("--noisy", help="folder of real noisy images (targets: the teacher's x_hat)")
    k.add_argument("--clean", nargs="+", help="one or more folders of clean images, unpaired with --noisy")
    k.add_argument("--student", default="unet_small", help="student model name (see `dbsn models`)")
    k.add_argument("--widths", help="student feature widths per level, e.g. 32,64,128")
    k.add_argument("--depth", type=POSITIVE_INT, help="student conv layers per level")
    k.add_argument("--colour", choices=("joint", "opponent"),
                   help="colour students: one network on RGB (joint, the default) or one gray network per "
                        "opponent channel, guided by the luminance (opponent; --init may name a gray student)")
    k.add_argument("--init", help="start the student from these weights (a student's checkpoint, weights file or "
                                  "bundled name): fine-tuning, or growing an MWCNN of fewer --depth layers deeper")
    _budget(k)
    k.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    k.add_argument("--patch-size", type=PATCH, default=96, help=PATCH_HELP)
    k.add_argument("--noisy-share", type=FRACTION, default=0.125, help="share of real noisy patches per batch")
    k.add_argument("--weight-noisy", type=NON_NEGATIVE, default=0.1, help="loss weight of the real noisy pairs")
    k.add_argument("--weight-clean", type=NON_NEGATIVE, default=1.0, help="loss weight of the synthetic pairs")
    k.add_argument("--u-range", default="0.9,1.1", help="range of the per-batch noise scale u")
    k.add_argument("--synthetic-levels", choices=("clean", "noisy"), default="clean",
                   help="noise level of the synthetic pairs: CNN_est on each clean image (clean, the paper) or "
                        "the levels measured on the noisy images (noisy; AWGN and MG)")
    k.add_argument("--lr", type=NON_NEGATIVE, default=1e-3, help="Adam learning rate of the student")
    k.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast for the student")
    k.add_argument("--ema", type=BELOW_ONE, default=0.0, help=EMA_HELP)
    k.add_argument("--workers", type=NON_NEGATIVE_INT, default=0, help=WORKERS_HELP)
    k.add_argument("--cache-gb", type=NON_NEGATIVE, help=CACHE_HELP)
    k.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    k.add_argument("--val-every", type=POSITIVE_INT, default=200, help="validate every this many steps")
    k.add_argument("--save-every", type=POSITIVE_INT, default=500, help="write checkpoint.pt every this many steps")
    k.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, mps")
    k.add_argument("--resume", action="store_true", help="continue the run in -o from its checkpoint")
    k.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN_HELP)

    e = sub.add_parser("evaluate", help="the paper's protocol on clean images with seed-0 synthetic noise")
    e.add_argument("--model", required=True, help="checkpoint (.pt), weights (.safetensors) or bundled name")
    e.add_argument("--clean", required=True, help="folder of clean test images")
    e.add_argument("--noise", required=True, help="noise spec, e.g. awgn:25 or hg:40,10")
    e.add_argument("--json", help="write the results to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.add_argument("--channels", type=int, choices=(1, 3),
                   help="convert every clean image to gray (1) or colour (3) first; without it, an image whose "
                        "channels differ from the model's is skipped and reported")
    e.add_argument("--gamma", type=POSITIVE, default=1.0, help="factor on the noise covariance in the fusion")
    e.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    e.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="fp32",
                   help="autocast for the network (default fp32: the protocol's numbers, the same on every "
                        "machine; auto: as dbsn denoise)")
    e.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=1, help=ENSEMBLE_HELP)
    e.add_argument("--max-memory", type=_memory, help=MEMORY_HELP)
    e.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, mps")

    d = sub.add_parser("denoise", help="denoise image files (PNG, JPEG, TIFF; 8 or 16 bits)")
    d.add_argument("inputs", nargs="+", help="image files or folders")
    d.add_argument("-o", "--out", required=True, help="output folder (never an input file)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace files already in the output folder (earlier outputs); an input is never replaced")
    d.add_argument("--model", help="checkpoint, weights or bundled name (default: the bundled default "
                                   "for each image's channels; see `dbsn list`)")
    d.add_argument("--noise-map", action="store_true", help="also write <name>_std_n.tiff (0-255 units)")
    d.add_argument("--reference", help="folder of clean images with the same names: print PSNR")
    d.add_argument("--gamma", type=POSITIVE, default=1.0, help="factor on the noise covariance in the fusion")
    d.add_argument("--max-memory", type=_memory, help=MEMORY_HELP)
    d.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, mps")
    d.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                   help="auto (default): a student in bf16 where the CPU or GPU computes bf16 natively (about "
                        "3 times faster, within 0.01 dB), else fp32; fp32: the same result on every machine")
    d.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=1, help=ENSEMBLE_HELP)

    demo = sub.add_parser("demo", help="denoise the bundled noisy images with the bundled default models, "
                                       "print PSNR, draw a before/after figure")
    demo.add_argument("-o", "--out", default="dbsn-demo", help="folder for the outputs")
    demo.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, mps")

    x = sub.add_parser("export", help="export a student to ONNX, checked against onnxruntime")
    x.add_argument("--model", required=True, help="student checkpoint, weights or bundled name")
    x.add_argument("--format", choices=("onnx",), default="onnx")
    x.add_argument("--opset", type=POSITIVE_INT, default=18)
    x.add_argument("-o", "--out", required=True, help="output file, e.g. student.onnx")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    a = sub.add_parser("add-noise", help="write noisy versions of clean images (float TIFF, unclipped): "
                                         "synthetic training or test data")
    a.add_argument("inputs", nargs="+", help="image files or folders")
    a.add_argument("-o", "--out", required=True, help="output folder (never an input file)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace files already in the output folder (earlier outputs); an input is never replaced")
    a.add_argument("--noise", required=True, help="noise spec: awgn:25, awgn:5-50, hg:40,10, hg-indep:40,10, mg")
    a.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="image i of the sorted inputs draws from seed + i")
    a.add_argument("--channels", type=int, choices=(1, 3), help="force gray (1) or colour (3)")
    for reader in (sub.choices[name] for name in ("train", "distill", "evaluate", "denoise", "add-noise")):
        reader.add_argument("--max-pixels", type=POSITIVE_INT,
                            help=f"the most pixels one image file may hold, all planes of a stack together, "
                                 f"checked before decoding (default {MAX_PIXELS:,})")
    sub.add_parser("models", help="list the registered architectures (for --model in train and --student)")
    sub.add_parser("list", help="list the bundled pretrained models (for --model in denoise and evaluate)")
    return parser


def _train_options(args: argparse.Namespace):
    from .train import TrainOptions

    model_kwargs = {k: v for k, v in (("width", args.width), ("blocks", args.blocks), ("mask_mode", args.mask_mode),
                                      ("estimator_input", args.estimator_input)) if v is not None}
    split = _numbers(args.phase_split, "--phase-split", 3)
    names = {f.name for f in fields(TrainOptions)}
    given = {k: v for k, v in vars(args).items() if k in names}
    given.update(model_kwargs=model_kwargs, phase_split=split)
    return TrainOptions(**given)


def _numbers(text: str, option: str, count: int | None = None) -> tuple[float, ...]:
    """Comma-separated finite numbers (``count`` of them when given)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or (count is not None and len(values) != count) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} takes {count or 'some'} comma-separated finite numbers, got {text!r}")
    return values


def _resumed_options(cls, args):
    """The options stored in the run's checkpoint; a new --steps or --minutes replaces the budget."""
    from .train import read_checkpoint

    ckpt = Path(args.out) / "checkpoint.pt"
    if not ckpt.is_file():
        raise ValueError(f"--resume: no checkpoint at {ckpt}")
    stored = json.loads(read_checkpoint(ckpt)["options"])
    unknown = sorted(set(stored) - {f.name for f in fields(cls)})
    if unknown:  # written by the other command, or by another version of dbsn
        raise ValueError(f"{ckpt} holds options that `dbsn {args.command}` of this version does not take "
                         f"({', '.join(unknown)}); resume it with the command and version that wrote it")
    options = cls(**{k: tuple(v) if isinstance(v, list) and k in ("phase_split", "u_range") else v
                     for k, v in stored.items()})
    if args.steps is not None or args.minutes is not None:
        options.steps, options.minutes = args.steps, args.minutes
    if getattr(args, "cache_gb", None) is not None:  # the machine may have changed
        options.cache_gb = args.cache_gb
    return options


def _report(summary: dict, out: str) -> None:
    from .distributed import from_environment

    if not from_environment().is_main:  # under torchrun, one report (rank 0's) is enough
        return
    print(json.dumps({k: summary[k] for k in ("steps", "elapsed_s", "last_validation", "skipped")}, indent=2))
    print(f"weights: {Path(out) / 'model.safetensors'}")


def cmd_train(args) -> int:
    from .train import TrainOptions, train

    options = _resumed_options(TrainOptions, args) if args.resume else _train_options(args)
    _report(train(options, args.out, resume=args.resume, progress_bar=not args.quiet, overwrite=args.overwrite),
            args.out)
    return EXIT_OK


def cmd_distill(args) -> int:
    from .train.distill import DistillOptions, distill

    if args.resume:
        options = _resumed_options(DistillOptions, args)
    else:
        student_kwargs = {}
        if args.widths:
            widths = _numbers(args.widths, "--widths")
            if not all(w.is_integer() and w >= 1 for w in widths):
                raise ValueError(f"--widths takes whole numbers of at least 1, e.g. 32,64,128, got {args.widths!r}")
            student_kwargs["widths"] = [int(w) for w in widths]
        if args.depth is not None:
            student_kwargs["depth"] = args.depth
        if args.colour:
            student_kwargs["colour"] = args.colour
        options = DistillOptions(
            teacher=args.teacher or "", noisy=args.noisy or "", clean=list(args.clean or []),
            student=args.student, student_kwargs=student_kwargs, init=args.init, steps=args.steps,
            minutes=args.minutes, batch_size=args.batch_size, patch_size=args.patch_size,
            noisy_share=args.noisy_share, weight_noisy=args.weight_noisy, weight_clean=args.weight_clean,
            u_range=_numbers(args.u_range, "--u-range", 2), synthetic_levels=args.synthetic_levels,
            lr=args.lr, precision=args.precision, ema=args.ema, workers=args.workers, cache_gb=args.cache_gb,
            seed=args.seed, val_every=args.val_every, save_every=args.save_every, device=args.device,
        )
    _report(distill(options, args.out, resume=args.resume, progress_bar=not args.quiet, overwrite=args.overwrite),
            args.out)
    return EXIT_OK


def _new_file(path: str | None, option: str, overwrite: bool, inputs: tuple = ()) -> None:
    """Refuse, before any work, an output file that exists (unless ``overwrite``) or is one of ``inputs``."""
    from .data.io import same_file

    if path is None:
        return
    out = Path(path)
    for source in inputs:
        if source and Path(source).exists() and same_file(out, Path(source)):
            raise FileExistsError(f"{option} {out} is the input {source}; choose another name")
    if out.is_dir():
        raise FileExistsError(f"{option} {out} is a folder; expected a file name")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise FileExistsError(f"{option} {out} already exists; pass --overwrite to replace it, or choose another name")


def cmd_evaluate(args) -> int:
    from .data.io import atomic_path
    from .inference import evaluate, format_table, load

    _new_file(args.json, "--json", args.overwrite, (args.model,))
    denoiser = load(args.model, gamma=args.gamma, precision=args.precision, device=args.device,
                    ensemble=args.ensemble, max_memory=args.max_memory)
    result = evaluate(denoiser, args.clean, args.noise, seed=args.seed, progress_bar=not args.quiet,
                      channels=args.channels)
    print(format_table(result))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return EXIT_FAILED if result["skipped"] else EXIT_OK


def _reference_psnr(written: list[Path], reference: str) -> list[tuple[str, float]]:
    import torch

    from .data.io import read_image
    from .metrics import psnr

    ref_dir, scores = Path(reference), []
    for out in written:
        matches = [p for p in ref_dir.glob(out.stem + ".*")]
        if not matches or out.name.endswith("_std_n.tiff"):
            continue
        try:
            x_hat, _ = read_image(out)
            x, _ = read_image(matches[0], channels=x_hat.shape[0])
            if x.shape != x_hat.shape:
                raise ValueError(f"its size {x.shape[1:]} differs from the output's {x_hat.shape[1:]}")
        except ValueError as err:  # a stack, or a reference that does not match: no score, said once
            log.warning("no PSNR for %s against %s: %s", out.name, matches[0], err)
            continue
        scores.append((out.name, psnr(torch.from_numpy(x_hat), torch.from_numpy(x))))
    return scores


def cmd_denoise(args) -> int:
    from .inference import DefaultDenoisers, denoise_files, load
    from .pretrained import default_names

    if args.model is None:
        if not default_names():
            raise ValueError("no bundled default model is installed; give --model CHECKPOINT")
        denoiser = DefaultDenoisers(blind_spot=args.noise_map, gamma=args.gamma, max_memory=args.max_memory,
                                    precision=args.precision, device=args.device, ensemble=args.ensemble)
    else:
        denoiser = load(args.model, gamma=args.gamma, max_memory=args.max_memory, precision=args.precision,
                        device=args.device, ensemble=args.ensemble)
    result = denoise_files(denoiser, args.inputs, args.out, noise_map=args.noise_map, progress_bar=not args.quiet,
                           overwrite=args.overwrite)
    for path in result.written:
        print(f"wrote {path}")
    if args.reference:
        scores = _reference_psnr(result.written, args.reference)
        for name, value in scores:
            print(f"PSNR {name}: {value:.2f} dB")
        if scores:
            print(f"PSNR mean over {len(scores)} images: {sum(v for _, v in scores) / len(scores):.2f} dB")
    return _report_failures(result)


def _report_failures(result) -> int:
    if result.failed:
        print(f"{len(result.failed)} of {len(result.failed) + len(result.written)} inputs failed:", file=sys.stderr)
        for path, reason in result.failed:
            print(f"  {reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_add_noise(args) -> int:
    from .inference import add_noise_files

    result = add_noise_files(args.inputs, args.out, args.noise, seed=args.seed, channels=args.channels,
                             overwrite=args.overwrite)
    print(f"wrote {len(result.written)} noisy images to {args.out}")
    return _report_failures(result)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, progress_bar=not args.quiet, device=args.device)


def cmd_models(args) -> int:
    from .nn import list_models
    from .nn.registry import model_defaults, model_kind

    for name in list_models():
        defaults = " ".join(f"{k}={v}" for k, v in model_defaults(name).items())
        print(f"{name:<12} {model_kind(name):<10} {defaults}")
    return EXIT_OK


def cmd_export(args) -> int:
    from .export import export_onnx
    from .pretrained import resolve_model
    from .train.checkpoint import load_model

    _new_file(args.out, "-o", args.overwrite, (args.model,))
    try:
        result = export_onnx(load_model(resolve_model(args.model)), args.out, opset=args.opset)
    except ImportError as err:
        raise ValueError(str(err)) from None
    print(f"wrote {result['path']}; onnxruntime vs torch: max abs difference {result['max_abs_diff']:.2e}")
    return EXIT_OK


def cmd_list(args) -> int:
    from .pretrained import bundled_models, default_names, weights_folder

    models, defaults = bundled_models(), default_names()
    if not models:
        print(f"no bundled models in {weights_folder()}")
        return EXIT_OK
    print(f"{'name':<16}{'channels':>9}  {'stage':<8}{'noise':<12}{'MB':>6}  description")
    for m in models.values():
        size = f"{m.file.stat().st_size / 1e6:.1f}" if m.available else "missing"
        star = " (default)" if m.name in defaults.values() else ""
        print(f"{m.name:<16}{m.channels:>9}  {m.stage:<8}{m.noise:<12}{size:>6}  {m.description}{star}")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "distill": cmd_distill, "evaluate": cmd_evaluate, "denoise": cmd_denoise,
            "add-noise": cmd_add_noise, "demo": cmd_demo, "models": cmd_models, "list": cmd_list, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some inputs failed, 2 bad usage or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dbsn: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if getattr(args, "max_pixels", None) is not None:
        from .data import io

        io.MAX_PIXELS = args.max_pixels  # one budget for every decoder of this command, worker processes too
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, FloatingPointError) as err:  # FileNotFoundError, FileExistsError, PermissionError
        print(f"dbsn {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"dbsn {args.command}: error: out of memory; lower --max-memory, --batch-size or --patch-size",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dbsn: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
