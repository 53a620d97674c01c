"""Self-supervised training of the stage-1 model (METHOD.md section 3).

One plain loop. The budget is a number of steps or of minutes; the learning rate
and the phase follow the *progress*, the fraction of the budget used so far.

Schedules:

- ``"three-phase"`` (the authors' advice): pre-train ``mu`` with the L2 loss, then
  the two heads with ``mu`` frozen, then everything jointly. ``phase_split`` gives
  each phase's share. With ``mu`` frozen the heads read only ``(y, mu, f)``: by
  default these are computed once, on large crops, when the heads phase begins
  (:class:`HeadsCache`), and every heads step is then a few 1x1 convolutions.
- ``"joint"`` (the official gray script): everything jointly from the start.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
import math
import numbers
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .. import distributed, losses
from ..losses import LOSSES
from ..options import comma_numbers, option
from ..data import BatchStream, ImageFolder, PatchSampler, cache_budget, load_folder, seeded_generator, split_validation
from ..data.patches import MIN_SIDE, check_patch_size
from ..distributed import Context
from ..metrics import psnr
from ..nn import create_model
from ..nn.blind_spot import NOISE_MODELS, std_n_map
from ..noise import parse_noise
from ..noise.diagnosis import diagnose, recommend
from ..runtime import INFERENCE_PRECISIONS, grad_scaler, memory_format_for
from ..seeds import HEADS_CACHE, VALIDATION, stream_seed
from .init import init_weights
from .loop import PRECISION_HELP, RunOptions, cosine, run_task
from .report import REPORT_IMAGES, quality_report

log = logging.getLogger("dbsn")

SCHEDULES = ("three-phase", "joint")
# (D-BSN, heads) learning rates of the default recipe, from scratch and from trained weights (--init).
# Adam's first steps move every weight by about the rate, whatever its gradient: from the bundled
# gray-stage1, one step at 1e-3 took mu from 24.3 dB to 7.9 on two BSD68 crops. The bundled
# gray-stage1 fine-tuned for 5 minutes on 68 bsd432 training images at awgn:25 (benchmarks/
# backbones.py --choose --from-bundled), fused PSNR: 26.24 dB at 1e-3, 26.52 at 3e-4, 26.58 at 1e-4
# (heads at three times the rate), against 26.41 for the model as it came.
LEARNING_RATES = {"scratch": (1e-3, 3e-3), "init": (1e-4, 3e-4)}
DIAGNOSIS_IMAGES = 64  # the noise of a real noisy set is diagnosed on at most this many of its images


_MG_ON_GRAY = ("{given} needs colour images (MG noise correlates the three channels), but {images}; "
               "give --noise awgn:SIGMA or --noise-model awgn for gray images")


@dataclass
class TrainOptions(RunOptions):
    """Everything a stage-1 run needs (:class:`RunOptions` and these); stored in its checkpoints."""

    noisy: str | list[str] | None = option(None, "folder(s) of real noisy images (no clean images needed)",
                                           nargs="+", group="data")
    clean: str | list[str] | None = option(None, "folder(s) of clean images to add synthetic noise to", nargs="+",
                                           group="data")
    noise: str | None = option(None, "synthetic noise: awgn:25, awgn:5-50, hg:40,10, hg-indep:40,10, mg",
                               group="data")
    # the recipe's defaults, chosen by benchmarks/backbones.py --choose on 68 training images (bsd432);
    # the learning rates depend on --init (see LEARNING_RATES) and are settled in __post_init__
    lr: float | None = option(None, f"Adam learning rate of the D-BSN (default {LEARNING_RATES['scratch'][0]:g}; "
                                    f"{LEARNING_RATES['init'][0]:g} with --init: trained weights lose what they "
                                    f"knew in the first steps at {LEARNING_RATES['scratch'][0]:g})", low=0,
                              group="optimisation")
    precision: str = option("auto", PRECISION_HELP, choices=INFERENCE_PRECISIONS, group="optimisation")
    fixed_noise: bool = option(False, "one fixed seed-0 noisy realisation per image, as in the evaluation protocol",
                               group="data")
    channels: int | None = option(None, "force gray (1) or colour (3)", choices=(1, 3), group="data")
    model: str = option("dbsn_small", "registered model name (see `dbsn models`)", group="model")
    model_kwargs: dict = option(help="settings of the model (--width, --blocks, ...)", factory=dict, cli=False)
    noise_model: str | None = option(None, "noise heads; default: the kind of --noise, or for real noisy images "
                                     "what the noise diagnosis finds (dbsn inspect)",
                                     choices=NOISE_MODELS, group="model")
    schedule: str = option("three-phase", "three-phase: L2 on mu, heads with mu frozen, joint; joint: official",
                           choices=SCHEDULES, group="optimisation")
    phase_split: tuple[float, float, float] = option((0.8, 0.2, 0.0), "shares of the budget for the three phases "
                                                     "(the authors' advice was 0.6,0.1,0.3)",
                                                     parse=comma_numbers(3), group="optimisation")
    loss: str = option("dbsn", "constrained DBSN loss or plain NLL", choices=LOSSES, group="optimisation")
    trace_weight: float = option(0.1, "weight of the DBSN loss's gap over the NLL: 1 is the paper's loss, 0 the NLL",
                                 low=0, high=1, group="optimisation")
    lr_heads: float | None = option(None, f"Adam learning rate of the two heads (default "
                                    f"{LEARNING_RATES['scratch'][1]:g}; {LEARNING_RATES['init'][1]:g} with --init)",
                                    low=0, group="optimisation")
    heads_cache_gb: float = option(1.0, "heads phase: compute the frozen D-BSN once on large crops, up to this many "
                                        "GB, and train the heads on them (0: a D-BSN pass per heads step)",
                                   low=0, group="optimisation")
    val_fraction: float = option(0.1, "share of images held out for validation", low=0, high=1, high_open=True,
                                 group="optimisation")

    def __post_init__(self) -> None:
        # stored with the run as numbers, so that --resume and the run record keep the rates it used
        start = LEARNING_RATES["init" if self.init else "scratch"]
        if self.lr is None:
            self.lr = start[0]
        if self.lr_heads is None:
            self.lr_heads = start[1]

    def validate(self) -> None:
        """Raise ``ValueError`` with what to change when options do not fit together."""
        if self.noisy is None and self.clean is None:
            raise ValueError("give --noisy DIR (real noisy images) or --clean DIR --noise SPEC (synthetic noise)")
        if self.noisy is not None and self.clean is not None:
            raise ValueError("--noisy and --clean are two different modes; give one of them")
        if self.clean is not None and self.noise is None:
            raise ValueError("--clean needs --noise SPEC, e.g. --noise awgn:25")
        if self.noisy is not None and (self.noise is not None or self.fixed_noise):
            raise ValueError("--noise and --fixed-noise only apply to --clean; real noisy images get no extra noise")
        if self.noise is not None:
            parse_noise(self.noise)
        super().validate()  # the ranges and choices of every option, these too
        split = tuple(self.phase_split)
        if (len(split) != 3 or not all(isinstance(s, numbers.Real) and math.isfinite(s) and s >= 0 for s in split)
                or sum(split) <= 0):
            raise ValueError(f"--phase-split expects three finite non-negative shares with a positive sum, "
                             f"e.g. 0.6,0.1,0.3, got {self.phase_split}")
        if self.channels == 1 and self.resolved_noise_model() == "mg":
            raise ValueError(_MG_ON_GRAY.format(given=self._mg_option(), images="--channels 1 makes the images gray"))

    def _mg_option(self) -> str:
        return "--noise-model mg" if self.noise_model is not None else f"--noise {self.noise}"

    def resolved_noise_model(self) -> str:
        """The head configuration: given, else the kind of ``--noise``, else ``"hg"`` for real noise."""
        if self.noise_model is not None:
            return self.noise_model
        return parse_noise(self.noise).kind if self.noise is not None else "hg"


@dataclass
class Phase:
    name: str  # "mu", "heads" or "joint"
    progress: float  # within the phase, 0 to 1


def phase_shares(options: TrainOptions) -> list[float]:
    """The share of the budget of each of the three phases, summing to 1."""
    total = sum(options.phase_split)
    return [share / total for share in options.phase_split]


def phase_at(options: TrainOptions, progress: float) -> Phase:
    if options.schedule == "joint":
        return Phase("joint", progress)
    bounds = torch.tensor(phase_shares(options), dtype=torch.float64).cumsum(0).tolist()
    start = 0.0
    for name, end in zip(("mu", "heads", "joint"), bounds):
        if progress < end or name == "joint":
            span = max(end - start, 1e-12)
            return Phase(name, min(max((progress - start) / span, 0.0), 1.0))
        start = end
    raise AssertionError("unreachable")


class Stage1Data:
    """Training sampler and fixed validation patches for one run."""

    def __init__(self, options: TrainOptions, generator: torch.Generator, ctx: Context = Context()):
        given = options.noisy or options.clean
        where = given if isinstance(given, str) else ", ".join(map(str, given))  # for the messages
        folder = load_folder(given, options.channels, cache_budget(options.cache_gb), min_side=MIN_SIDE)
        self.folder: ImageFolder = folder
        self.channels = folder.channels
        if folder.channels == 1 and options.resolved_noise_model() == "mg":
            raise ValueError(_MG_ON_GRAY.format(given=options._mg_option(), images=f"the images in {where} are gray"))
        clean = noisy = None
        noise = parse_noise(options.noise) if options.noise else None
        if options.noisy is not None:
            noisy = folder.images
        else:
            clean = folder.images
            if options.fixed_noise:
                noisy = clean.map(partial(noise.add_protocol, seed=0))
        train_idx, val_idx = split_validation(len(folder), options.val_fraction, generator)
        # every rank checks all training images, not its shard: they all refuse or none does
        check_patch_size(options.patch_size, [folder.images.sizes[i] for i in train_idx], where)
        pick = lambda items, idx: None if items is None else items.subset(idx)  # noqa: E731
        if ctx.enabled:  # each rank its own shard of the images and its own stream of patches
            generator.manual_seed(ctx.seed(options.seed))
        shard = ctx.shard(train_idx)
        self.sampler = PatchSampler(
            options.patch_size, options.batch_size, generator,
            noisy=pick(noisy, shard), clean=pick(clean, shard), noise=noise,
        )
        held_out = val_idx or train_idx
        val_gen = seeded_generator(stream_seed(options.seed, VALIDATION))  # the same on every rank
        val_sampler = PatchSampler(
            options.patch_size, options.val_patches, val_gen,
            noisy=pick(noisy, held_out), clean=pick(clean, held_out), noise=noise,
        )
        self.val_y, self.val_x = val_sampler.sample()
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        self.report_idx = list(held_out)  # the images the quality report denoises (dbsn.train.report)


class HeadsCache:
    """The frozen D-BSN's ``(y, mu, f)`` on large noisy crops, for the heads phase.

    While ``mu`` is frozen the heads see only these three maps, so they are computed
    once, on crops of side ``TILE`` (or the images' size), at most ``budget_gb`` of them
    and at most twice the set's pixels, and every heads step draws patch-sized
    windows from them: a few 1x1 convolutions instead of a D-BSN pass. The crops are
    large so that most of their pixels are far from a crop border, as in a whole image
    at test time. The README's Training section gives what it measured.

    Under a time budget the building stops after ``seconds`` (at least ``MIN_TILES`` crops): a
    third of the heads phase, so that a short run still trains its heads; building the whole
    cache of 68 BSD68-size images took about 40 s on 2 CPU cores, all of a 5-minute run's
    heads phase at phases 0.9/0.1, which left the noise estimate at its initial 4.9.

    The crops are drawn from their own generator (``seed``), so that a run resumed in
    the heads phase rebuilds the same cache (under a step budget; a time budget may stop
    at another crop).
    """

    TILE = 256
    MIN_TILES = 8

    def __init__(self, model: nn.Module, sampler: PatchSampler, budget_gb: float, precision: str,
                 device: torch.device, seed: int, seconds: float | None = None):
        width, channels, sizes = model.bsn.width, model.in_channels, sampler.image_sizes
        tile = max(sampler.patch_size, min(self.TILE, max(min(h, w) for h, w in sizes)))
        f_bytes = 2 if precision != "fp32" else 4
        per_tile = tile * tile * (width * f_bytes + 2 * channels * 4)
        twice_the_set = math.ceil(2 * sum(h * w for h, w in sizes) / tile**2)  # more adds little
        self.tiles = max(1, min(int(budget_gb * 2**30 // per_tile), twice_the_set))
        self.tile = tile
        crops = PatchSampler(tile, 1, seeded_generator(seed), noisy=sampler.noisy, clean=sampler.clean,
                             noise=sampler.noise)
        self.y, self.mu, self.f = [], [], []
        fmt = memory_format_for(device)
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(self.tiles):
                if (seconds is not None and i >= self.MIN_TILES
                        and time.perf_counter() - start > seconds):
                    break
                y = crops.sample()[0].to(device, memory_format=fmt)
                mu, f = model.features(y, precision)
                self.y.append(y)
                self.mu.append(mu.float())
                self.f.append(f)
        self.tiles = len(self.y)
        self.patch = sampler.patch_size

    def sample(self, batch_size: int, generator: torch.Generator):
        """``batch_size`` random windows: ``(y, mu, f)``, each ``(N, ., patch, patch)``."""
        p, out = self.patch, ([], [], [])
        for i in torch.randint(self.tiles, (batch_size,), generator=generator).tolist():
            h, w = self.y[i].shape[-2:]
            top = int(torch.randint(0, h - p + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - p + 1, (1,), generator=generator))
            for maps, part in zip((self.y, self.mu, self.f), out):
                part.append(maps[i][..., top : top + p, left : left + p])
        return tuple(torch.cat(part) for part in out)


class Stage1Objective(nn.Module):
    """The loss of one batch in one phase, as one module call (so that DDP can wrap it).

    The D-BSN runs under the chosen precision; the heads, the variances and the
    log-determinants always run in fp32, where they stay finite.
    """

    def __init__(self, model: nn.Module, options: TrainOptions):
        super().__init__()
        self.model, self.options = model, options

    def forward(self, y: torch.Tensor, phase: str, cached: tuple | None = None) -> dict[str, torch.Tensor]:
        """``{"loss", ...parts}``; ``cached``: ``(mu, f)`` of the frozen D-BSN for the heads phase, from
        :class:`HeadsCache`."""
        if cached is not None:
            mu, f = cached
        else:
            with torch.no_grad() if phase == "heads" else nullcontext():
                mu, f = self.model.features(y, self.options.precision)
        mu, f = mu.float(), f.float()
        if phase == "mu":
            return {"loss": losses.l2_loss(y, mu)}
        s_mu, s_n = self.model.uncertainty(y, mu, f)
        return losses.gaussian_loss_parts(self.options.loss, y, mu, s_mu, s_n, self.options.trace_weight)


class Stage1Task:
    """The stage-1 step: the phase and learning rate follow the progress through the budget."""

    loss_parts = ["nll", "gap"]  # the NLL and the DBSN loss's gap over it (unweighted), outside the mu phase
    log_fields = ["val_nll", "val_psnr_mu", "val_psnr", "noise_std_est"]

    def __init__(self, options: TrainOptions, device: torch.device, ctx: Context = Context()):
        self.options, self.device, self.ctx = options, device, ctx
        self.generator = seeded_generator(options.seed)
        self.data = Stage1Data(options, self.generator, ctx)
        self.diagnosis = None
        if options.noisy is not None and (options.noise_model is None or "pd_stride" not in options.model_kwargs):
            options = self.options = self._diagnosed(options)
        self.stream = BatchStream(self.data.sampler.sample, self.generator, options.workers, options.seed, ctx.rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)  # the weight initialisation draws from the global generator
            model = create_model(
                options.model, in_channels=self.data.channels,
                noise_model=options.resolved_noise_model(), **options.model_kwargs,
            )
        if options.init:
            init_weights(model, options.init)
        self.model = model.to(device, memory_format=memory_format_for(device))
        self.objective = distributed.wrap(Stage1Objective(self.model, options), ctx, device, partial=True)
        self.optimizer = torch.optim.Adam(
            [{"params": list(model.bsn.parameters())}, {"params": model.head_parameters()}], lr=options.lr
        )
        self.scaler = grad_scaler(options.precision, device)
        self.heads_cache: HeadsCache | None = None  # built when the heads phase begins

    def losses(self, progress: float) -> dict:
        phase = phase_at(self.options, progress)
        lr = self._set_lr(phase)
        if phase.name == "heads" and self.options.heads_cache_gb > 0:
            y, mu, f = self._heads_cache().sample(self.options.batch_size, self.generator)
            parts = self.objective(y, phase.name, (mu, f))
        else:
            self.heads_cache = None  # outside the heads phase: free its memory
            y, _ = self.stream.next()
            y = y.to(self.device, memory_format=memory_format_for(self.device))
            parts = self.objective(y, phase.name)
        return {**parts, "phase": phase.name, "lr": lr}

    def _heads_cache(self) -> HeadsCache:
        if self.heads_cache is None:
            log.info("heads phase: computing the frozen D-BSN once on large crops (--heads-cache-gb %g)",
                     self.options.heads_cache_gb)
            options = self.options
            seconds = None  # under a time budget: a third of the heads phase at most
            if options.minutes is not None:
                seconds = 60 * options.minutes * phase_shares(options)[1] / 3
            self.heads_cache = HeadsCache(self.model, self.data.sampler, options.heads_cache_gb,
                                          options.precision, self.device,
                                          stream_seed(options.seed, HEADS_CACHE, self.ctx.rank), seconds)
            log.info("heads phase: %d crops of %d x %d cached", self.heads_cache.tiles, self.heads_cache.tile,
                     self.heads_cache.tile)
        return self.heads_cache

    def _set_lr(self, phase: Phase) -> float:
        scale = cosine(phase.progress)
        if self.options.schedule == "three-phase" and phase.name == "joint":
            scale *= 0.1  # fine-tuning: a larger restart measurably undid the pre-trained mu
        bsn_group, head_group = self.optimizer.param_groups
        bsn_group["lr"] = self.options.lr * scale if phase.name != "heads" else 0.0
        head_group["lr"] = self.options.lr_heads * scale if phase.name != "mu" else 0.0
        return bsn_group["lr"] if phase.name != "heads" else head_group["lr"]

    def _diagnosed(self, options: TrainOptions) -> TrainOptions:
        """``options`` with the noise heads and the pixel-shuffle strides the noise of the real noisy images
        calls for (:mod:`dbsn.noise.diagnosis`), where the user gave neither; what it chose is logged."""
        images = self.data.folder.images
        picked = range(0, len(images), max(1, math.ceil(len(images) / DIAGNOSIS_IMAGES)))
        self.diagnosis = diagnose(images[i].numpy() for i in picked)
        advice = recommend(self.diagnosis)
        kwargs = dict(options.model_kwargs)
        told = []
        if options.noise_model is None:
            options = replace(options, noise_model=advice.noise_model)
            told.append(advice.reasons[0])
        if "pd_stride" not in kwargs:
            kwargs.update(pd_stride=advice.pd_stride, pd_stride_infer=advice.pd_stride_infer)
            options = replace(options, model_kwargs=kwargs)
            told.append(advice.reasons[1])
        if self.ctx.is_main:
            log.info("the noise of the %d noisy images (%d read): %s", len(images), self.diagnosis.images,
                     "; ".join(told) + " (give --noise-model or --pd-stride to choose yourself; `dbsn inspect "
                     "DIR` shows the diagnosis)")
        return options

    def summary(self) -> dict:
        data = self.data
        return {"images_train": data.n_train, "images_val": data.n_val, "channels": data.channels,
                "skipped": [str(p) for p, _ in data.folder.skipped],
                **({"noise_diagnosis": self.diagnosis.to_dict()} if self.diagnosis else {})}

    def report(self, out: Path, weights: Path, last_validation: dict) -> dict | None:
        """The quality report of a run on noisy images (:mod:`dbsn.train.report`); none for clean ones."""
        if self.options.noisy is None:
            return None
        folder = self.data.folder
        picked = self.data.report_idx[:REPORT_IMAGES]
        names = [str(p if isinstance(p, Path) else f"{p[0]}[{p[1]}]") for p in (folder.paths[i] for i in picked)]
        images = [(name, folder.images[i].numpy()) for name, i in zip(names, picked)]
        return quality_report(weights, images, out, last_validation, device=self.device)

    @torch.no_grad()
    def validate(self) -> dict:
        """NLL on the validation patches; PSNR of ``mu`` and ``x_hat`` when clean patches exist."""
        y = self.data.val_y.to(self.device, memory_format=memory_format_for(self.device))
        out = self.model(y)
        s_mu = out.get("cov_mu", out["var_mu"])
        s_n = out.get("cov_n", out["var_n"])
        result = {
            "val_nll": losses.nll_loss(y, out["mu"], s_mu, s_n).item(),
            "noise_std_est": std_n_map(out).mean().item(),
        }
        if self.data.val_x is not None:
            x = self.data.val_x.to(self.device)
            result["val_psnr_mu"] = psnr(out["mu"].clamp(0, 1), x)
            result["val_psnr"] = psnr(out["x_hat"].clamp(0, 1), x)
        return result


def train(options: TrainOptions, out_dir: str, resume: bool = False, progress_bar: bool = True,
          overwrite: bool = False) -> dict:
    """Train a stage-1 model into ``out_dir``; returns a summary.

    ``out_dir`` receives ``checkpoint.pt`` (resumable), ``model.safetensors`` (final
    weights), ``log.csv`` and ``run.json``. A new run refuses a folder that holds any of
    them unless ``overwrite``; ``resume`` continues the run there (:func:`prepare_run`).
    """
    return run_task(Stage1Task, options, out_dir, resume, progress_bar, overwrite)
