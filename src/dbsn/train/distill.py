"""Stage 2: knowledge distillation into an ordinary denoiser (METHOD.md section 6).

The frozen stage-1 model (the teacher) provides two kinds of training pairs:

- real noisy images ``y_i`` with the teacher's fused estimate ``x_hat_i`` as target;
- unpaired clean images ``x_j`` with synthetic noise ``y_j = x_j + u L(x_j) z``, where
  ``L L^T`` is the noise (co)variance that the teacher's CNN_est estimates on ``x_j``
  (averaged over the image for AWGN and MG), ``z`` is standard normal and
  ``u ~ U(0.9, 1.1)`` is drawn once per batch.

Loss: ``0.1 * mse(f(y_i), x_hat_i) + mse(f(y_j), x_j)``, with ``1/8`` of each batch real (``--loss l1``: the
mean absolute error in place of each mse).

Where the synthetic levels come from (``synthetic_levels``):

- ``"clean"``, the paper: CNN_est applied to the clean image itself. For HG, whose
  estimator reads ``mu``, the clean image is the natural stand-in.
- ``"noisy"``: the per-image levels the teacher measured on the noisy images, each
  clean patch drawing the level of a random noisy image. For AWGN and MG the
  estimator reads ``y``, so on a clean image it sees an input it was never trained
  on; a model meant for a range of levels (``awgn:5-50``) needs the levels of its
  noisy data. HG noise depends on the signal and keeps ``"clean"``.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import torch

from .. import distributed, linalg
from ..options import comma_numbers, option
from ..data import BatchStream, PatchSampler, cache_budget, load_folder, seeded_generator
from ..data.patches import MIN_SIDE, check_patch_size
from ..distributed import Context
from ..metrics import psnr
from ..nn import create_model
from ..nn.registry import model_kind
from ..runtime import autocast, grad_scaler, memory_format_for
from ..seeds import VALIDATION, stream_seed
from ..denoiser import Denoiser
from ..hub import load_model
from .init import init_weights
from .loop import RunOptions, cosine, run_task

log = logging.getLogger("dbsn")

SYNTHETIC_LEVELS = ("clean", "noisy")
LOSSES = ("l2", "l1")


@dataclass
class DistillOptions(RunOptions):
    """Everything a distillation run needs (:class:`RunOptions`, with its own batch size and rate, and
    these); stored in its checkpoints."""

    init: str | None = option(None, "start the student from these weights (a student's checkpoint, weights file "
                                    "or bundled name): fine-tuning, or growing an MWCNN of fewer --depth layers deeper")
    batch_size: int = option(16, "patches per step", low=1, integer=True)
    lr: float = option(1e-3, "Adam learning rate of the student", low=0)
    teacher: str = option("", "stage-1 checkpoint or weights from `dbsn train`")
    noisy: str = option("", "folder of real noisy images (targets: the teacher's x_hat)")
    clean: list[str] = option(help="one or more folders of clean images, unpaired with --noisy", nargs="+",
                              factory=list)
    student: str = option("unet_small", "student model name (see `dbsn models`)")
    student_kwargs: dict = option(help="settings of the student (--widths, --depth, --colour)", factory=dict,
                                  cli=False)
    noisy_share: float = option(0.125, "share of real noisy patches per batch", low=0, high=1)
    weight_noisy: float = option(0.1, "loss weight of the real noisy pairs", low=0)
    weight_clean: float = option(1.0, "loss weight of the synthetic pairs", low=0)
    loss: str = option("l2", "the student's error on each pair: l2 (squared, the paper's) or l1 (absolute)",
                       choices=LOSSES)
    u_range: tuple[float, float] = option((0.9, 1.1), "range of the per-batch noise scale u", parse=comma_numbers(2))
    synthetic_levels: str = option("clean", "noise level of the synthetic pairs: CNN_est on each clean image (clean, "
                                            "the paper) or the levels measured on the noisy images (noisy; AWGN and "
                                            "MG)", choices=SYNTHETIC_LEVELS)

    def validate(self) -> None:
        if not self.teacher:
            raise ValueError("give --teacher STAGE1_CKPT (a model trained by `dbsn train`)")
        if not self.noisy or not self.clean:
            raise ValueError("give --noisy DIR (real noisy images) and at least one --clean DIR (unpaired clean images)")
        super().validate()  # the ranges and choices of every option, these too
        u_range = tuple(self.u_range)
        if (len(u_range) != 2 or not all(isinstance(u, numbers.Real) and math.isfinite(u) for u in u_range)
                or not 0 < u_range[0] <= u_range[1]):
            raise ValueError(f"--u-range expects two finite numbers 0 < low <= high, e.g. 0.9,1.1, got {self.u_range}")
        if model_kind(self.student) != "student":
            raise ValueError(f"--student must be a student model (e.g. unet_small, mwcnn), got {self.student!r}")

    def split(self) -> tuple[int, int]:
        """How many real noisy and synthetic patches make one batch."""
        n_noisy = int(round(self.batch_size * self.noisy_share))
        if 0 < self.noisy_share and n_noisy == 0:
            n_noisy = 1
        return n_noisy, self.batch_size - n_noisy


@torch.no_grad()
def noise_factor(teacher, x: torch.Tensor) -> torch.Tensor:
    """The factor ``L`` of the noise (co)variance CNN_est estimates on the clean image ``x`` ``(C, H, W)``.

    Returns a per-channel std ``(C, h, w)`` for diagonal noise (``h = w = 1`` when averaged)
    or a lower-triangular Cholesky factor ``(C, C, 1, 1)`` for a full covariance.
    """
    return factor_of(teacher.average_noise(teacher.noise_estimator(x[None]))[0])


def factor_of(s_n: torch.Tensor) -> torch.Tensor:
    """The factor ``L`` with ``L L^T = s_n``: variances ``(C, h, w)`` or covariances ``(C, C, h, w)``."""
    if s_n.dim() == 4:  # (C, C, h, w): full covariance, drawn with its Cholesky factor
        chol = linalg.cholesky(s_n.permute(2, 3, 0, 1))
        return chol.permute(2, 3, 0, 1).contiguous()
    return s_n.clamp_min(0).sqrt()


def apply_factor(factor: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Noise ``L z`` for ``z`` ``(B, C, H, W)``: ``factor`` as returned by :func:`noise_factor`, batched."""
    if factor.dim() == 5:
        return torch.einsum("bijhw,bjhw->bihw", factor, z)
    return factor * z


class DistillData:
    """Teacher targets for the noisy images, noise factors for the clean ones, and samplers."""

    def __init__(self, options: DistillOptions, teacher, generator: torch.Generator,
                 device: torch.device = torch.device("cpu"), ctx: Context = Context()):
        per_pixel = teacher.heads.noise_per_pixel
        # the teacher and the options must fit before its images are read and denoised
        if options.synthetic_levels == "clean" and teacher.estimator_input == "residual":
            raise ValueError("this teacher's noise estimator reads the residual y - mu, which a clean image does "
                             "not have; use --synthetic-levels noisy")
        if options.synthetic_levels == "noisy" and per_pixel:
            raise ValueError("--synthetic-levels noisy needs noise of one level per image (AWGN, MG); HG noise "
                             "depends on the signal, so its level comes from the clean image (the default)")
        channels = int(teacher.config["in_channels"])
        budget = cache_budget(options.cache_gb)
        noisy = load_folder(options.noisy, channels, budget, min_side=MIN_SIDE)
        check_patch_size(options.patch_size, noisy.images.sizes, options.noisy)  # all images: every rank the same
        self.channels = channels
        noisy_images = ctx.shard(noisy.images)  # each rank: its own shard of both folders
        log.info("teacher: denoising %d noisy images", len(noisy_images))
        judge = Denoiser(teacher, device=device)  # tiles large images within its memory budget
        x_hat, measured = [], []
        for y in noisy_images:
            out = judge.predict(y[None])
            x_hat.append(out["x_hat"][0])
            measured.append(factor_of(out.get("cov_n", out["var_n"])[0]))
        self.options = options
        # the teacher's x_hat stays in memory: the clean folders get what is left of the budget
        clean = load_folder(options.clean, channels, max(0, budget - 2 * noisy.nbytes), min_side=MIN_SIDE)
        check_patch_size(options.patch_size, clean.images.sizes, ", ".join(options.clean))
        self.skipped = noisy.skipped + clean.skipped
        clean_images = ctx.shard(clean.images)
        teacher.cpu()
        # the paper: CNN_est on each clean image; "noisy": the levels measured on the noisy images
        self.factors = ([noise_factor(teacher, x) for x in clean_images] if options.synthetic_levels == "clean"
                        else measured)
        if ctx.enabled:
            generator.manual_seed(ctx.seed(options.seed))
        n_noisy, n_clean = options.split()
        self.n_noisy, self.n_clean = n_noisy, n_clean
        # the noisy sampler pairs y with the teacher's x_hat; the clean sampler pairs x with its
        # per-pixel noise std (HG), or only x when the factor is one per image
        self.noisy_sampler = PatchSampler(options.patch_size, max(n_noisy, 1), generator,
                                          noisy=noisy_images, clean=x_hat)
        self.clean_sampler = PatchSampler(options.patch_size, max(n_clean, 1), generator, noisy=clean_images,
                                          clean=self.factors if per_pixel else None)
        self.per_pixel = per_pixel
        self.n_images = (len(noisy_images), len(clean_images))
        val_gen = seeded_generator(stream_seed(options.seed, VALIDATION))  # the same on every rank
        self.val = self._batch(
            PatchSampler(options.patch_size, options.val_patches, val_gen, noisy=noisy_images, clean=x_hat),
            PatchSampler(options.patch_size, options.val_patches, val_gen, noisy=clean_images,
                         clean=self.factors if per_pixel else None),
            val_gen,
        )

    def _batch(self, noisy_sampler, clean_sampler, generator):
        y_i, x_hat_i = noisy_sampler.sample(generator)
        x_j, std, idx = clean_sampler.sample_with_index(generator)
        if self.per_pixel:
            factor = std
        else:
            if self.options.synthetic_levels == "noisy":  # each clean patch: the level of a random noisy image
                idx = torch.randint(len(self.factors), (len(idx),), generator=generator).tolist()
            factor = torch.stack([self.factors[i] for i in idx])
        lo, hi = self.options.u_range
        u = lo + (hi - lo) * float(torch.rand((), generator=generator))
        z = torch.randn(x_j.shape, generator=generator)
        y_j = x_j + u * apply_factor(factor, z)
        return y_i, x_hat_i, y_j, x_j

    def sample(self, generator):
        y_i, x_hat_i, y_j, x_j = self._batch(self.noisy_sampler, self.clean_sampler, generator)
        return y_i[: self.n_noisy], x_hat_i[: self.n_noisy], y_j[: self.n_clean], x_j[: self.n_clean]


class DistillTask:
    loss_parts = ["teacher_mse", "synthetic_mse"]  # on the teacher's targets, on the synthetic pairs (unweighted)
    log_fields = ["val_psnr_teacher", "val_psnr_synthetic"]

    def __init__(self, options: DistillOptions, device: torch.device, ctx: Context = Context()):
        self.options, self.device, self.ctx = options, device, ctx
        self.generator = seeded_generator(options.seed)
        teacher = load_model(options.teacher)
        if model_kind(teacher.config["name"]) != "blind-spot":
            raise ValueError(f"--teacher must be a stage-1 model from `dbsn train`, got {teacher.config['name']!r}")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher_config = dict(teacher.config)
        self.data = DistillData(options, teacher, self.generator, device, ctx)
        self.stream = BatchStream(self.data.sample, self.generator, options.workers, options.seed, ctx.rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            model = create_model(options.student, in_channels=self.data.channels, **options.student_kwargs)
        if options.init:
            init_weights(model, options.init)
        self.model = model.to(device, memory_format=memory_format_for(device))
        self.net = distributed.wrap(self.model, ctx, device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
        self.scaler = grad_scaler(options.precision, device)

    def losses(self, progress: float) -> dict:
        lr = self.options.lr * cosine(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        y_i, x_hat_i, y_j, x_j = (t.to(self.device) for t in self.stream.next())
        y = torch.cat([y_i, y_j]).contiguous(memory_format=memory_format_for(self.device))
        with autocast(self.options.precision, self.device):
            pred = self.net(y)["x_hat"]
        pred = pred.float()
        n = y_i.shape[0]
        loss, parts = y.new_zeros(()), {}
        if n:
            parts["teacher_mse"] = torch.mean((pred[:n] - x_hat_i) ** 2)
            loss = loss + self.options.weight_noisy * self._error(pred[:n], x_hat_i, parts["teacher_mse"])
        if y_j.shape[0]:
            parts["synthetic_mse"] = torch.mean((pred[n:] - x_j) ** 2)
            loss = loss + self.options.weight_clean * self._error(pred[n:], x_j, parts["synthetic_mse"])
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}, "phase": "distill", "lr": lr}

    def _error(self, pred: torch.Tensor, target: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
        """The training loss of one part: its mean squared error, or with ``--loss l1`` its mean absolute one
        (the logged parts stay squared errors, comparable across runs)."""
        return mse if self.options.loss == "l2" else torch.mean(torch.abs(pred - target))

    def summary(self) -> dict:
        return {"teacher": self.teacher_config, "images_noisy": self.data.n_images[0],
                "images_clean": self.data.n_images[1], "skipped": [str(p) for p, _ in self.data.skipped]}

    @torch.no_grad()
    def validate(self) -> dict:
        y_i, x_hat_i, y_j, x_j = (t.to(self.device) for t in self.data.val)
        return {
            "val_psnr_teacher": psnr(self.model(y_i)["x_hat"].clamp(0, 1), x_hat_i),
            "val_psnr_synthetic": psnr(self.model(y_j)["x_hat"].clamp(0, 1), x_j),
        }


def distill(options: DistillOptions, out_dir: str, resume: bool = False, progress_bar: bool = True,
            overwrite: bool = False) -> dict:
    """Distil a stage-1 teacher into a student in ``out_dir`` (same files and rules as :func:`dbsn.train.train`)."""
    return run_task(DistillTask, options, out_dir, resume, progress_bar, overwrite)
