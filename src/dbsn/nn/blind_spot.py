"""The stage-1 model: D-BSN, ``var_mu`` head and noise estimator CNN_est together."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import linalg
from ..fusion import bayes_fusion
from ..runtime import autocast
from ..tiling import TileSpec
from .backbones import create_backbone
from .bsn import kaiming_init
from .heads import NoiseEstimator, VarMuHead
from .shuffle import PixelShuffleBSN
from .registry import register_model

ESTIMATOR_INPUTS = ("paper", "residual")


@dataclass(frozen=True)
class NoiseHeads:
    """What a noise model decides about the heads, chosen once when the model is built (METHOD.md 2, 4).

    Attributes:
        form: ``"diag"`` (per-channel variances) or ``"full"`` (``C x C`` covariances).
        noise_per_pixel: CNN_est's (co)variance is kept per pixel (signal-dependent noise), not
            averaged over the image.
        mu_averaged: ``var_mu``'s covariance is averaged over the image too.
        reads_mu: CNN_est reads ``mu`` (the noise depends on the signal), not ``y``.
    """

    name: str
    form: str
    noise_per_pixel: bool = False
    mu_averaged: bool = False
    reads_mu: bool = False


HEADS = {
    "awgn": NoiseHeads("awgn", "diag"),
    "hg": NoiseHeads("hg", "diag", noise_per_pixel=True, reads_mu=True),
    "mg": NoiseHeads("mg", "full", mu_averaged=True),
}
NOISE_MODELS = tuple(HEADS)


class DBSNModel(nn.Module):
    """D-BSN with its uncertainty heads (METHOD.md sections 1, 2, 4).

    ``noise_model`` decides the heads:

    - ``"awgn"``: CNN_est reads ``y``; its variance is averaged over the image.
    - ``"hg"``: CNN_est reads ``mu`` (signal-dependent noise); one variance per pixel.
    - ``"mg"``: full ``C x C`` covariances, both averaged over the image (colour).

    ``estimator_input`` decides what CNN_est reads for AWGN and MG: ``"paper"`` (``y``)
    or ``"residual"`` (``y - mu``, with ``mu`` detached). A 1x1 network on ``y`` sees
    one pixel value at a time, so one level per image must come from the spread of
    pixel values; that works for one noise level, but a model trained on a range of
    levels (``awgn:5-50``) read 22 for std 5. On the residual, ``mean((y - mu)^2)`` is
    the noise variance plus the error of ``mu``, whatever the level (that model read 12);
    its fusion measured worse, though (README, "Training"). HG keeps ``mu``:
    its variance is per pixel, and a pixel's own residual would let it explain itself.

    ``pd_stride`` > 1 runs the backbone on pixel-shuffled sub-images (:mod:`dbsn.nn.shuffle`), for
    noise correlated over fewer than ``pd_stride`` pixels; ``pd_stride_infer`` is the stride at
    inference (default ``min(2, pd_stride)``). The heads stay per pixel at full resolution: CNN_est
    reads the pixel's value, whose noise variance the shuffle does not change, and the fusion
    combines ``mu`` (from pixels at least the stride away) with the pixel itself, which is the
    posterior mean when their errors are independent, as they are beyond the correlation length.

    ``forward(y)`` returns a dict with ``mu``, ``var_mu`` and ``var_n`` (per-channel
    variances ``(B, C, H, W)``, or ``(B, C, 1, 1)`` when averaged), ``cov_mu`` and
    ``cov_n`` (``(B, C, C, ., .)``) for ``"mg"``, and the fused ``x_hat``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 96,
        blocks: int = 8,
        noise_model: str = "awgn",
        head_width: int | None = None,
        mask_mode: str = "mask",
        estimator_input: str = "paper",
        backbone: str = "dbsn",
        pd_stride: int = 1,
        pd_stride_infer: int | None = None,
    ):
        super().__init__()
        if noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {noise_model!r}")
        if estimator_input not in ESTIMATOR_INPUTS:
            raise ValueError(f"estimator_input must be one of {ESTIMATOR_INPUTS}, got {estimator_input!r}")
        heads = HEADS[noise_model]
        if estimator_input == "residual" and heads.noise_per_pixel:
            raise ValueError("the residual estimator input needs one noise level per image (awgn, mg); "
                             "HG noise is estimated per pixel from mu")
        self.estimator_input = estimator_input
        if head_width is None:
            head_width = 16 if (in_channels == 1 and noise_model == "awgn") else 32
        self.in_channels, self.noise_model, self.heads = in_channels, noise_model, heads
        form = heads.form
        self.bsn = create_backbone(backbone, in_channels, width, blocks, mask_mode)
        if pd_stride > 1 or (pd_stride_infer or 1) > 1:
            self.bsn = PixelShuffleBSN(self.bsn, pd_stride, pd_stride_infer)
        self.var_mu_head = VarMuHead(width, in_channels, form, head_width)
        self.noise_estimator = NoiseEstimator(in_channels, form, head_width)
        self.bsn.initialise()
        kaiming_init(self.var_mu_head)

    @property
    def radius(self) -> int:
        return self.bsn.radius

    def head_parameters(self):
        return list(self.var_mu_head.parameters()) + list(self.noise_estimator.parameters())

    def tile_spec(self) -> TileSpec:
        """Context radius and a generous estimate of the inference memory per pixel, for tiling."""
        return TileSpec(radius=self.radius, align=getattr(self.bsn, "align", 1),
                        bytes_per_pixel=4 * self.bsn.MEMORY_FLOATS * self.bsn.width)

    @property
    def shuffled(self) -> bool:
        """The backbone runs on pixel-shuffled sub-images (``pd_stride`` > 1)."""
        return isinstance(self.bsn, PixelShuffleBSN)

    def pixel_uncertainty(self, y: torch.Tensor, mu: torch.Tensor, f: torch.Tensor):
        """``(s_mu, s_n)`` per pixel, before any averaging over the image."""
        return self.var_mu_head(f), self.noise_estimator(self.estimator_source(y, mu))

    def estimator_source(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """What CNN_est reads: ``mu`` for HG, else ``y`` or the residual ``y - mu``."""
        if self.heads.reads_mu:
            return mu
        return y - mu.detach() if self.estimator_input == "residual" else y

    def average_noise(self, s_n: torch.Tensor) -> torch.Tensor:
        """``s_n`` averaged over the image for AWGN and MG (one level per image); per pixel for HG."""
        return s_n if self.heads.noise_per_pixel else s_n.mean(dim=(-2, -1), keepdim=True)

    def average(self, s_mu: torch.Tensor, s_n: torch.Tensor):
        """Average over the image where the noise model says so: ``s_n`` for AWGN and MG, ``s_mu`` for MG."""
        if self.heads.mu_averaged:
            s_mu = s_mu.mean(dim=(-2, -1), keepdim=True)
        return s_mu, self.average_noise(s_n)

    def uncertainty(self, y: torch.Tensor, mu: torch.Tensor, f: torch.Tensor):
        """``(s_mu, s_n)``: ``cov_*`` for ``"mg"``, ``var_*`` otherwise."""
        return self.average(*self.pixel_uncertainty(y, mu, f))

    def features(self, y: torch.Tensor, precision: str = "fp32", stride: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The D-BSN's ``(mu, f)`` under ``precision`` autocast: the one place the rule lives for training,
        its heads cache and inference. The D-BSN's head and tail run in fp32 (:class:`DBSN`), so ``mu``
        is fp32; ``f`` is in the autocast dtype, for the caller to cast (or keep, to save memory).
        ``stride``: the pixel-shuffle stride of this call (a shuffled model only; default: the training
        stride in training mode, the inference stride in evaluation mode)."""
        with autocast(precision, y.device):
            if stride is not None and self.shuffled:
                return self.bsn(y, stride=stride)
            if stride not in (None, 1):
                raise ValueError(f"a pixel-shuffle stride of {stride} needs a model built with pd_stride > 1")
            return self.bsn(y)

    def pixel_parts(self, y: torch.Tensor, precision: str = "fp32", stride: int | None = None
                    ) -> dict[str, torch.Tensor]:
        """``mu`` and the per-pixel ``s_mu``, ``s_n``: all local, so they can be computed tile by tile.

        ``precision`` is the D-BSN's; the noise estimator and the heads run in fp32, as in training.
        """
        mu, f = self.features(y, precision, stride)
        mu, f = mu.to(y.dtype), f.to(y.dtype)
        s_mu, s_n = self.pixel_uncertainty(y, mu, f)
        return {"mu": mu, "s_mu": s_mu, "s_n": s_n}

    def assemble(self, y: torch.Tensor, parts: dict[str, torch.Tensor], gamma: float = 1.0) -> dict[str, torch.Tensor]:
        """The outputs of :meth:`forward` from :meth:`pixel_parts`: image averages, then the fusion."""
        mu = parts["mu"]
        s_mu, s_n = self.average(parts["s_mu"], parts["s_n"])
        out = {"mu": mu, "x_hat": bayes_fusion(y, mu, s_mu, s_n, gamma)}
        if self.heads.form == "full":
            out.update(cov_mu=s_mu, cov_n=s_n)
        out.update(var_mu=linalg.diagonal(s_mu), var_n=linalg.diagonal(s_n))
        return out

    def forward(self, y: torch.Tensor, gamma: float = 1.0) -> dict[str, torch.Tensor]:
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"expected y of shape (B, {self.in_channels}, H, W), got {tuple(y.shape)}")
        return self.assemble(y, self.pixel_parts(y), gamma)


def std_n_map(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The estimated noise std ``(B, H, W)`` in 0-255 units: root of the mean channel variance.

    The one definition behind ``noise_std_est`` in training logs, ``dbsn evaluate`` and the
    noise map of ``dbsn denoise``.
    """
    var_n = out["var_n"].clamp_min(0).mean(1)
    h, w = out["mu"].shape[-2:]
    return 255.0 * var_n.sqrt().expand(var_n.shape[0], h, w)


@register_model("dbsn", kind="blind-spot", width=96, blocks=8)
def dbsn(**kwargs) -> DBSNModel:
    """The paper size: width 96, 8 blocks per branch, 6.6 M parameters, 101 x 101 receptive field."""
    return DBSNModel(**kwargs)


@register_model("dbsn_small", kind="blind-spot", width=48, blocks=4)
def dbsn_small(**kwargs) -> DBSNModel:
    """A CPU-sized D-BSN: about 13x fewer multiply-adds per pixel than the paper size."""
    return DBSNModel(**kwargs)


@register_model("dbsn_tiny", kind="blind-spot", width=16, blocks=2)
def dbsn_tiny(**kwargs) -> DBSNModel:
    """The smallest D-BSN, for tests and quick trials."""
    return DBSNModel(**kwargs)


@register_model("bsn_unet", kind="blind-spot", width=48, blocks=4, backbone="unet")
def bsn_unet(**kwargs) -> DBSNModel:
    """The blind-spot U-Net backbone with the D-BSN's heads: 4 pooling levels of 48 channels."""
    return DBSNModel(**kwargs)
