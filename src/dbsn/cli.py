"""Command line: ``dbsn train | distill | evaluate | denoise | inspect | add-noise | demo | models | list | export |
bundle``.

Parse, then call one library function.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from .data.io import MAX_PIXELS
from .denoiser import FUSIONS
from .nn.masked import MASK_MODES
from .nn.blind_spot import ESTIMATOR_INPUTS
from .nn.students import COLOURS
from .options import add_arguments, comma_numbers, from_arguments, number_type
from .runtime import ENSEMBLES, INFERENCE_PRECISIONS
from .train.distill import DistillOptions
from .train.stage1 import TrainOptions

log = logging.getLogger("dbsn")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ENSEMBLE_HELP = ("average the outputs on this many mirrored and rotated copies of each image: that many "
                 "times slower, about 0.1 dB better with 8")
MEMORY_HELP = ("working memory for the model, e.g. 512M or 4G (default: a quarter of the memory available, "
               "from 256M to 8G); larger images are denoised in tiles with the same result")
FUSION_HELP = ("how a stage-1 model fuses its blind-spot estimate with the noisy pixel: local (default) with "
               "variances measured on the image around each pixel, image with one per image and channel, heads "
               "with the model's own (the paper's)")
REFINE_HELP = ("passes of random-replacing refinement for a model trained with --pd-stride > 1 (default 0: off; "
               "AP-BSN uses 8): each pass puts 16%% of the noisy pixels back and denoises again, and their mean "
               "is fused with the noisy image")
OVERWRITE_RUN_HELP = ("start a new run in an -o that holds one: its checkpoint.pt, model.safetensors, log.csv and "
                      "run.json are removed first")

POSITIVE_INT = number_type(int, 1, what="an integer")
NON_NEGATIVE_INT = number_type(int, 0, what="an integer")
POSITIVE = number_type(float, 0, low_open=True, what="a number")


def _memory(text: str) -> str:
    from .tiling import parse_memory

    try:
        parse_memory(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _training_groups(parser: argparse.ArgumentParser) -> dict:
    """The argument groups the training options name (``option(group=...)``)."""
    return {"data": parser.add_argument_group("data"), "model": parser.add_argument_group("model"),
            "budget": parser.add_mutually_exclusive_group(), "optimisation": parser.add_argument_group("optimisation")}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dbsn", description="Self-supervised image denoising (DBSN).")
    parser.add_argument("--version", action="version", version=f"dbsn {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a stage-1 model (D-BSN, noise estimator) from noisy images")
    t.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, model.safetensors, log.csv")
    groups = _training_groups(t)
    groups["data"].description = "give --noisy, or --clean with --noise"
    add_arguments(t, TrainOptions, groups)
    m = groups["model"]  # the settings of the model itself, stored as model_kwargs
    m.add_argument("--width", type=POSITIVE_INT, help="feature channels c (paper: 96)")
    m.add_argument("--blocks", type=POSITIVE_INT, help="dilated blocks per branch B (paper: 8)")
    m.add_argument("--mask-mode", choices=MASK_MODES, help="centre-masked convolution variant")
    m.add_argument("--estimator-input", choices=ESTIMATOR_INPUTS,
                   help="what CNN_est reads for AWGN and MG: y (paper, the default) or y - mu (residual: needed "
                        "for a range of noise levels)")
    m.add_argument("--pd-stride", type=POSITIVE_INT,
                   help="pixel-shuffle stride in training, for noise correlated between neighbouring pixels "
                        "(camera photographs: 5; 1: none); default for --noisy: what the noise diagnosis finds "
                        "(`dbsn inspect`), else 1")
    m.add_argument("--pd-stride-infer", type=POSITIVE_INT,
                   help="pixel-shuffle stride at inference (default: 2 where --pd-stride > 1)")
    t.add_argument("--resume", action="store_true", help="continue the run in -o from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN_HELP)

    k = sub.add_parser("distill", help="stage 2: distil a stage-1 model into a fast ordinary denoiser")
    k.add_argument("-o", "--out", required=True, help="run folder: checkpoint.pt, model.safetensors, log.csv")
    add_arguments(k, DistillOptions, {"budget": k.add_mutually_exclusive_group()})
    k.add_argument("--widths", help="student feature widths per level, e.g. 32,64,128")
    k.add_argument("--depth", type=POSITIVE_INT, help="student conv layers per level")
    k.add_argument("--attention", type=POSITIVE_INT,
                   help="MWCNN students: self-attention within blocks of this many pixels of the coarsest level "
                        "(e.g. 8; a block of 8 spans 64 image pixels at 3 levels), for structure that repeats")
    k.add_argument("--colour", choices=COLOURS,
                   help="colour students: one network on RGB (joint, the default) or one gray network per "
                        "opponent channel, guided by the luminance (opponent; --init may name a gray student)")
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
    e.add_argument("--refine", type=NON_NEGATIVE_INT, help=REFINE_HELP)
    e.add_argument("--fusion", choices=FUSIONS, default="local", help=FUSION_HELP)
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
    d.add_argument("--refine", type=NON_NEGATIVE_INT, help=REFINE_HELP)
    d.add_argument("--fusion", choices=FUSIONS, default="local", help=FUSION_HELP)
    d.add_argument("--report", help="write to this JSON file, and print, what the model took out of each image "
                                    "(the residual's level, its correlation, whether it follows the edges): a check "
                                    "without clean images")

    demo = sub.add_parser("demo", help="denoise the bundled noisy images with the bundled default models, "
                                       "print PSNR, draw a before/after figure")
    demo.add_argument("-o", "--out", default="dbsn-demo", help="folder for the outputs")
    demo.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, mps")

    b = sub.add_parser("bundle", help="package a trained run to share: weights, a model card, index.json")
    b.add_argument("run", help="folder of a finished `dbsn train` or `dbsn distill` run")
    b.add_argument("-o", "--out", required=True,
                   help="model folder (index.json, weights, cards); DBSN_WEIGHTS=FOLDER serves it by name")
    b.add_argument("--name", required=True, help="the model's name, e.g. microscope-gray")
    b.add_argument("--description", default="", help="one line: which images and which noise it is for")
    b.add_argument("--check", help="folder of clean images, not used in training, to choose the storage on")
    b.add_argument("--noise", help="with --check: the noise they get (the evaluation protocol), e.g. awgn:25")
    b.add_argument("--storage", choices=("auto", "int8", "fp16", "fp32"), default="auto",
                   help="auto: the smallest storage that costs at most 0.01 dB against fp32 on --check (fp32 without --check)")
    b.add_argument("--default", action="store_true", help="make it the folder's default for its channels")
    b.add_argument("--overwrite", action="store_true", help="replace a model of this name in the folder")

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
    i = sub.add_parser("inspect", help="diagnose the noise of noisy images: its level, its dependence on the "
                                       "signal, its correlation between neighbouring pixels")
    i.add_argument("inputs", nargs="+", help="image files or folders of noisy images")
    i.add_argument("--figure", help="draw the diagnosis into this PNG file")
    i.add_argument("--json", help="write the diagnosis to this JSON file")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --figure or --json file")
    i.add_argument("--channels", type=int, choices=(1, 3), help="convert every image to gray (1) or colour (3)")
    i.add_argument("--max-pixels", type=POSITIVE_INT,
                   help=f"the most pixels one image file may hold (default {MAX_PIXELS:,})")
    sub.add_parser("models", help="list the registered architectures (for --model in train and --student)")
    sub.add_parser("list", help="list the bundled pretrained models (for --model in denoise and evaluate)")
    return parser


def _train_options(args: argparse.Namespace):
    from .train import TrainOptions

    model_kwargs = {k: v for k, v in (("width", args.width), ("blocks", args.blocks), ("mask_mode", args.mask_mode),
                                      ("estimator_input", args.estimator_input), ("pd_stride", args.pd_stride),
                                      ("pd_stride_infer", args.pd_stride_infer)) if v is not None}
    if "pd_stride_infer" in model_kwargs and "pd_stride" not in model_kwargs:
        raise ValueError("--pd-stride-infer needs --pd-stride (the training stride), e.g. --pd-stride 5 "
                         "--pd-stride-infer 2")
    return from_arguments(TrainOptions, args, model_kwargs=model_kwargs)


def _distill_options(args: argparse.Namespace):
    from .train.distill import DistillOptions

    student_kwargs = {}
    if args.widths:
        widths = comma_numbers()(args.widths, "--widths")
        if not all(w.is_integer() and w >= 1 for w in widths):
            raise ValueError(f"--widths takes whole numbers of at least 1, e.g. 32,64,128, got {args.widths!r}")
        student_kwargs["widths"] = [int(w) for w in widths]
    if args.depth is not None:
        student_kwargs["depth"] = args.depth
    if args.colour:
        student_kwargs["colour"] = args.colour
    if args.attention is not None:
        if not args.student.startswith("mwcnn"):
            raise ValueError(f"--attention is for MWCNN students (mwcnn, mwcnn_small), not {args.student!r}")
        student_kwargs["attention"] = args.attention
    return from_arguments(DistillOptions, args, student_kwargs=student_kwargs)


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
    if "quality_report" in summary:
        q = summary["quality_report"]
        print(f"quality report ({q['images']} held-out images; {Path(out) / 'report.json'}, "
              f"{Path(out) / 'report.png'}): residual std {q['residual_std']:.2f} against the estimated noise "
              f"{q['noise_std_est']:.2f}, its neighbour correlation {q['rho1']:+.2f}; {q['verdict']}")


def cmd_train(args) -> int:
    from .train import TrainOptions, train

    options = _resumed_options(TrainOptions, args) if args.resume else _train_options(args)
    _report(train(options, args.out, resume=args.resume, progress_bar=not args.quiet, overwrite=args.overwrite),
            args.out)
    return EXIT_OK


def cmd_distill(args) -> int:
    from .train.distill import DistillOptions, distill

    options = _resumed_options(DistillOptions, args) if args.resume else _distill_options(args)
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
    from .denoiser import load
    from .evaluation import evaluate, format_table

    _new_file(args.json, "--json", args.overwrite, (args.model,))
    denoiser = load(args.model, gamma=args.gamma, precision=args.precision, device=args.device,
                    ensemble=args.ensemble, max_memory=args.max_memory, refine=args.refine, fusion=args.fusion)
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
    from .data.io import atomic_path
    from .denoiser import load
    from .files import DefaultDenoisers, denoise_files
    from .hub import default_names

    _new_file(args.report, "--report", args.overwrite)

    if args.model is None:
        if not default_names():
            raise ValueError("no bundled default model is installed; give --model CHECKPOINT")
        denoiser = DefaultDenoisers(blind_spot=args.noise_map, gamma=args.gamma, max_memory=args.max_memory,
                                    precision=args.precision, device=args.device, ensemble=args.ensemble,
                                    refine=args.refine, fusion=args.fusion)
    else:
        denoiser = load(args.model, gamma=args.gamma, max_memory=args.max_memory, precision=args.precision,
                        device=args.device, ensemble=args.ensemble, refine=args.refine, fusion=args.fusion)
    result = denoise_files(denoiser, args.inputs, args.out, noise_map=args.noise_map, progress_bar=not args.quiet,
                           overwrite=args.overwrite, report=bool(args.report))
    for path in result.written:
        print(f"wrote {path}")
    if not getattr(denoiser, "shuffled", False) and result.written:
        _suggest_for_correlated_noise(args.inputs, args.model)
    if args.report:
        for r in result.reports:
            estimate = f" (noise estimate {r['noise_std_est']:.2f})" if "noise_std_est" in r else ""
            print(f"report {Path(r['image']).name}: residual std {r['residual_std']:.2f}{estimate}, lag-1 "
                  f"correlation {r['rho1']:+.2f}, edge correlation {r['structure']:+.2f}: {r['verdict']}")
        with atomic_path(args.report) as tmp:
            tmp.write_text(json.dumps(result.reports, indent=2))
        print(f"wrote {args.report}")
    if args.reference:
        scores = _reference_psnr(result.written, args.reference)
        for name, value in scores:
            print(f"PSNR {name}: {value:.2f} dB")
        if scores:
            print(f"PSNR mean over {len(scores)} images: {sum(v for _, v in scores) / len(scores):.2f} dB")
    return _report_failures(result)


SUGGEST_FILES = 8  # the inputs the diagnosis behind dbsn denoise's suggestion reads, at most


def _suggest_for_correlated_noise(inputs, used: str | None = None) -> None:
    """Warn where the inputs' noise is shared between neighbouring pixels (camera photographs), which a
    model without pixel shuffle keeps, and say what to use instead of ``used`` (the --model given)."""
    from .files import collect_inputs, diagnose_files
    from .hub import bundled_models

    try:
        diagnosis, _ = diagnose_files(collect_inputs(inputs)[:SUGGEST_FILES])
    except ValueError:  # images too small to read the noise from: nothing to suggest
        return
    if diagnosis.correlated:
        # a bundled model learned from real photographs' noise, for images of these channels
        real = [(name, entry) for name, entry in bundled_models().items()
                if entry.noise == "real noise" and entry.channels == len(diagnosis.channel_std)]
        hg = "gray-hg" if len(diagnosis.channel_std) == 1 else "color-hg"
        # neither wins everywhere (README, "A bundled model for real photographs"): name both
        models = [f"--model {name} (learned from real photographs' noise; the better at heavy noise, as in phone "
                  "pictures)" for name, _ in real[:1]]
        if hg != used:
            models.append(f"--model {hg} (the better at light noise)")
        instead = f", or try {' or '.join(models)}" if models else ""
        log.warning("the noise of these images is shared between neighbouring pixels (correlation %+.2f at lag 1, "
                    "as in camera photographs), which this model, made for noise independent from pixel to pixel, "
                    "keeps in part: train on them with `dbsn train --noisy DIR` (pixel shuffle)%s; "
                    "`dbsn inspect DIR` shows the diagnosis", diagnosis.rho1, instead)


def _report_failures(result) -> int:
    if result.failed:
        print(f"{len(result.failed)} of {len(result.failed) + len(result.written)} inputs failed:", file=sys.stderr)
        for path, reason in result.failed:
            print(f"  {reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_inspect(args) -> int:
    from .data.io import atomic_path
    from .figure import noise_figure
    from .files import collect_inputs, diagnose_files
    from .noise.diagnosis import describe, recommend

    _new_file(args.json, "--json", args.overwrite)
    _new_file(args.figure, "--figure", args.overwrite)
    paths = collect_inputs(args.inputs)
    diagnosis, skipped = diagnose_files(paths, args.channels, args.max_pixels)
    advice = recommend(diagnosis)
    print(describe(diagnosis))
    print(f"dbsn train --noisy would use: --noise-model {advice.noise_model} --pd-stride {advice.pd_stride}"
          + (f" --pd-stride-infer {advice.pd_stride_infer}" if advice.pd_stride > 1 else ""))
    for reason in advice.reasons:
        print(f"  {reason}")
    if advice.pd_stride > 1:
        print("  correlated noise is what camera photographs carry after demosaicking and compression; a model "
              "trained on clean images with white noise will keep part of it")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({**diagnosis.to_dict(), "recommendation": vars(advice),
                                       "skipped": skipped}, indent=2))
    if args.figure:
        print(f"wrote {noise_figure(diagnosis, args.figure)}")
    for path, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    return EXIT_FAILED if skipped else EXIT_OK


def cmd_add_noise(args) -> int:
    from .files import add_noise_files

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
    from .hub import load_model

    _new_file(args.out, "-o", args.overwrite, (args.model,))
    try:
        result = export_onnx(load_model(args.model), args.out, opset=args.opset)
    except ImportError as err:
        raise ValueError(str(err)) from None
    print(f"wrote {result['path']}; onnxruntime vs torch: max abs difference {result['max_abs_diff']:.2e}")
    return EXIT_OK


def cmd_bundle(args) -> int:
    from .bundle import bundle_run

    result = bundle_run(args.run, args.out, args.name, args.description, check=args.check, noise=args.noise,
                        storage=args.storage, default=args.default, overwrite=args.overwrite)
    check = (f"; PSNR on --check {result['psnr_fp32']:.3f} dB in fp32, {result['psnr_stored']:.3f} as stored"
             if result["psnr_fp32"] is not None else "")
    print(f"wrote {result['weights']} ({result['storage']}), {result['card']}, {result['index']}{check}")
    return EXIT_OK


def cmd_list(args) -> int:
    from .hub import bundled_models, default_names, weights_folder

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
            "add-noise": cmd_add_noise, "demo": cmd_demo, "models": cmd_models, "list": cmd_list, "export": cmd_export,
            "bundle": cmd_bundle, "inspect": cmd_inspect}


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
