"""The one call every model answers to: a trained model ready to denoise arrays, within a memory
budget, at a precision, with an optional ensemble of mirrored and rotated copies."""

from __future__ import annotations

import logging
import os
from functools import partial

import numpy as np
import torch

from . import linalg
from .fusion import FUSION_WINDOW, bayes_fusion, measured_variances
from .hub import load_model
from .nn.registry import model_kind
from .nn.blind_spot import std_n_map
from .noise.diagnosis import channel_levels
from .runtime import check_ensemble, memory_format_for, resolve_device, resolve_precision
from .tiling import WINDOW_PIXELS, TileSpec, parse_memory, spec_for_precision, tiled_apply

log = logging.getLogger("dbsn")


class Denoiser:
    """A trained model ready to denoise (it takes the model over: masks are frozen for inference).

    >>> denoiser = dbsn.load("run/model.safetensors")
    >>> clean = denoiser.denoise(noisy)   # (H, W) or (H, W, C); uint8, uint16 or float in [0, 1]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "auto",
        gamma: float = 1.0,
        max_memory: int | str | None = None,
        precision: str = "auto",
        ensemble: int = 1,
        refine: int | None = None,
        fusion: str = "local",
    ):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device, memory_format=memory_format_for(self.device))
        for module in self.model.modules():  # inference only: mask the blind-spot weights once, not per call
            if hasattr(module, "freeze_mask"):
                module.freeze_mask()
        self.gamma = gamma
        self.max_memory = parse_memory(max_memory)
        # on a CPU, windows of at most WINDOW_PIXELS even where the budget holds more: they measured
        # faster per pixel (dbsn.tiling); None runs any image that fits the budget in one pass
        self.window_pixels = WINDOW_PIXELS if self.device.type == "cpu" else None
        # "auto": bf16 for a student on a device that computes it natively (within 0.01 dB of fp32,
        # benchmarks/colour_paths.py), fp32 for a stage-1 model (whose colour form loses 0.045 dB in bf16)
        self.precision = resolve_precision(precision, self.device, bf16_exact=not self.is_blind_spot)
        self.channels = int(model.config.get("in_channels", 1))
        self.ensemble = check_ensemble(ensemble)
        # random-replacing refinement: off by default (for its cost: see R3_PASSES), for a pixel-shuffled
        # model only
        self.shuffled = bool(getattr(self.model, "shuffled", False))
        self.refine = 0 if refine is None else int(refine)
        if self.refine < 0 or (self.refine and not self.shuffled):
            raise ValueError(f"refine takes a number of passes >= 0 for a pixel-shuffled model (trained with "
                             f"--pd-stride > 1), got {refine} for a model without pixel shuffle; leave it out")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion takes one of {', '.join(FUSIONS)}, got {fusion!r}")
        # a pixel-shuffled model's heads do not fit inference (dbsn.fusion.measured_variances): measured always
        self.fusion = "image" if fusion == "heads" and self.shuffled else fusion
        self.fusion_window = FUSION_WINDOW

    @property
    def config(self) -> dict:
        return dict(self.model.config)

    def tile_spec(self) -> TileSpec:
        """What tiling budgets for this model under this denoiser's precision."""
        return spec_for_precision(self.model.tile_spec(), self.precision)

    @property
    def is_blind_spot(self) -> bool:
        """True for a stage-1 model (``mu``, noise estimate and fusion), False for a student."""
        return model_kind(self.model.config["name"]) == "blind-spot"

    def predict(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``y`` ``(B, C, H, W)`` in [0, 1]; returns its outputs (``x_hat`` clamped to [0, 1]).

        Images larger than the memory budget go through the model tile by tile
        (:mod:`dbsn.tiling`), with the same result as one pass. With ``ensemble`` n > 1 each
        output is the mean over n mirrored and rotated copies of ``y``, each turned back.
        """
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ValueError(f"expected a tensor (B, {self.channels}, H, W), got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError(f"the image holds {int((~torch.isfinite(y)).sum())} NaN or infinite pixels; "
                             "replace them before denoising")
        with torch.inference_mode():
            y = y.to(self.device, torch.float32)
            out = {}
            var_level = self._noise_variance(y)
            for turns, flip in ENSEMBLE_TRANSFORMS[:self.ensemble]:
                for k, v in self._one_pass(_transform(y, turns, flip), var_level).items():
                    v = _untransform(v, turns, flip) if v.dim() >= 4 else v
                    out[k] = out[k] + v if k in out else v
        out = {k: (v / self.ensemble).cpu() for k, v in out.items()}
        if not torch.isfinite(out["x_hat"]).all():  # never hand on (or write) a wrong image
            raise FloatingPointError("the model gave NaN or infinite values on this image; its weights may be "
                                     "broken (retrain, or try --precision fp32)")
        return out

    def _noise_variance(self, y: torch.Tensor) -> torch.Tensor | None:
        """The noise variance of each image and channel of ``y`` read from its flat blocks
        (:func:`dbsn.noise.diagnosis.channel_levels`), ``(B, C)``, infinity where an image is too small to
        read; where the fusion measures on the image with that level (see :meth:`_fuse`). None otherwise."""
        if not self.is_blind_spot or self.fusion == "heads" or self._noise_from_heads:
            return None
        return _channel_variances(y)

    @property
    def _noise_from_heads(self) -> bool:
        """The measured fusion takes the heads' own per-pixel noise variance: heads that model signal-dependent
        noise (HG), on a model that ran at its training resolution (no pixel shuffle)."""
        return bool(self.model.heads.noise_per_pixel) and not self.shuffled

    def _one_pass(self, y: torch.Tensor, var_level: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The model's outputs on ``y`` (``x_hat`` clamped), tile by tile when it exceeds the memory budget.

        ``var_level``: the noise variance per image and channel read from ``y``, for the measured fusion."""
        y = y.contiguous(memory_format=memory_format_for(self.device))
        spec = self.tile_spec()
        # every model: its per-pixel parts tile by tile (under the precision, as the model rules), then
        # what needs the whole image (a stage-1 model's averages and fusion, in fp32)
        own = tiled_apply(partial(self.model.pixel_parts, precision=self.precision), y, spec, self.max_memory,
                          self.window_pixels)
        if self.is_blind_spot and self.fusion != "heads":  # the heads' noise estimate only, not their fusion
            var_n_heads = linalg.diagonal(self.model.average_noise(own["s_n"])).float()
            out = {"mu": own["mu"].float(), **self._fuse(y, own["mu"], var_n_heads, var_level)}
        else:
            out = {k: v.float() for k, v in self.model.assemble(y, own, gamma=self.gamma).items()}
        out["x_hat"] = out["x_hat"].clamp(0, 1)
        if self.refine:  # the refined estimate takes the place of mu in the fusion with y
            out["x_hat"] = self._fuse(y, self._refined(y, out["x_hat"], spec), out["var_n"], var_level
                                      )["x_hat"].clamp(0, 1)
        return out

    def _fuse(self, y: torch.Tensor, mu: torch.Tensor, var_n_heads: torch.Tensor, var_level: torch.Tensor | None
              ) -> dict[str, torch.Tensor]:
        """``x_hat``, ``var_mu`` and ``var_n`` of the fusion measured on the image
        (:func:`dbsn.fusion.measured_variances`): per channel, ``var_mu`` over a ``fusion_window`` x
        ``fusion_window`` window around each pixel (``fusion="local"``; ``FUSION_WINDOW`` unless set) or over
        the whole image (``"image"``).

        The noise variance: the heads' own per pixel for signal-dependent heads at the training resolution;
        otherwise the lower of two upper bounds, both read from flat blocks: of ``y`` (``var_level``), where
        texture reads as noise too, and of ``y - mu``, where only what ``mu`` missed does. Where neither can
        be read (a small image), the heads' own averaged over the image."""
        mu = mu.float()
        if var_level is None:
            var_n = var_n_heads
        else:
            var_n = torch.minimum(var_level.to(mu), _channel_variances(y - mu).to(mu))
            var_n = torch.where(torch.isfinite(var_n), var_n, var_n_heads.mean(dim=(-2, -1)).expand_as(var_n))
        window = self.fusion_window if self.fusion == "local" else None
        var_mu, var_n = measured_variances(y, mu, var_n, window)
        return {"x_hat": bayes_fusion(y.to(mu), mu, var_mu, var_n, self.gamma), "var_mu": var_mu, "var_n": var_n}

    def _refined(self, y: torch.Tensor, x_hat: torch.Tensor, spec: TileSpec) -> torch.Tensor:
        """Random-replacing refinement (R3, AP-BSN): ``refine`` passes of the blind-spot network without
        pixel shuffle on ``x_hat`` with a random ``R3_SHARE`` of its pixels put back to the noisy ``y``;
        their mean ``mu``. The denoised neighbours no longer carry the correlated noise, so the full
        resolution is safe; the noisy pixels put back keep the passes from only repeating ``x_hat``.
        The replaced pixels are drawn from a generator seeded for each image: the same image gives the
        same result."""
        generator = torch.Generator().manual_seed(R3_SEED)
        one_pass = partial(self.model.pixel_parts, precision=self.precision, stride=1)
        total = torch.zeros_like(x_hat)
        for _ in range(self.refine):
            keep = (torch.rand(y.shape, generator=generator) < R3_SHARE).to(y.device)
            z = torch.where(keep, y, x_hat).contiguous(memory_format=memory_format_for(self.device))
            total += tiled_apply(one_pass, z, spec, self.max_memory, self.window_pixels)["mu"].float()
        return (total / self.refine).clamp(0, 1)

    def denoise(self, image: np.ndarray, return_std_n: bool = False):
        """Denoise one image array; the result has the input's shape and dtype.

        Args:
            image: ``(H, W)`` or ``(H, W, C)``, uint8, uint16, or float in [0, 1].
            return_std_n: also return the estimated noise std map ``(H, W)`` in 0-255 units.
        """
        array = np.asarray(image)
        if array.ndim not in (2, 3):
            raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {array.shape}")
        if array.dtype == np.uint8:
            scale = 255.0
        elif array.dtype == np.uint16:
            scale = 65535.0
        elif np.issubdtype(array.dtype, np.floating):
            scale = 1.0
        else:
            raise TypeError(f"expected uint8, uint16 or float pixels, got {array.dtype}")
        chw = array.astype(np.float32)[None] / scale if array.ndim == 2 else np.moveaxis(array, -1, 0) / scale
        chw = match_channels(chw.astype(np.float32), self.channels, "the image")
        out = self.predict(torch.from_numpy(chw)[None])
        x_hat = out["x_hat"][0].numpy()
        if array.ndim == 3 and array.shape[-1] != x_hat.shape[0]:
            x_hat = np.repeat(x_hat, array.shape[-1], axis=0)
        result = x_hat[0] if array.ndim == 2 else np.moveaxis(x_hat, 0, -1)
        if scale != 1.0:
            result = np.round(result * scale).astype(array.dtype)
        else:
            result = result.astype(array.dtype if array.dtype != np.float16 else np.float32)
        if return_std_n:
            if "var_n" not in out:
                raise ValueError("return_std_n needs a stage-1 model (it carries the noise estimator)")
            return result, std_n_map(out)[0].numpy()
        return result


def _channel_variances(images: torch.Tensor) -> torch.Tensor:
    """The noise variance of each image and channel of ``images`` ``(B, C, H, W)`` read from its flat blocks
    (:func:`dbsn.noise.diagnosis.channel_levels`), ``(B, C)`` on their device; infinity for an image too
    small to read."""
    rows = []
    for image in images.float().cpu().numpy():
        levels = channel_levels(image)
        rows.append(np.full(image.shape[0], np.inf) if levels is None else levels**2)
    return torch.tensor(np.stack(rows), dtype=torch.float32, device=images.device)


# random-replacing refinement (AP-BSN's settings): passes, share of noisy pixels put back, seed. Off by
# default: at 9 times the cost of the first pass, on 16 bsd432 training images with correlated noise (dbsn
# train --noisy for 5 to 7 minutes; benchmarks/shuffle_fusion.py, shuffle_stride.py), 8 passes with the
# fusion measured on the image gained +1.21 dB over the input (median) against +0.93 for the first pass
# (colour, std 10) and +2.81 against +2.26 (gray, lag-1 correlation 0.25), and lost at correlation 0.65
# (+1.63 against +2.02)
R3_PASSES, R3_SHARE, R3_SEED = 8, 0.16, 0

# how a stage-1 model fuses mu with y: with variances measured on the image, over a window around each pixel
# ("local", the default) or over the whole image ("image"), or with its heads' own ("heads", the paper's;
# a pixel-shuffled model measures over the whole image instead); see dbsn.fusion.measured_variances
FUSIONS = ("local", "image", "heads")

# (quarter turns, mirrored) in the order ``ensemble`` takes them: 2 adds the mirror image, 4 the
# half turn of both, 8 the quarter turns (the whole symmetry group of the square)
ENSEMBLE_TRANSFORMS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def _transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``x`` mirrored left-right (when ``flip``), then turned ``turns`` quarter turns, over its last two axes."""
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, (-2, -1)) if turns else x


def _untransform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`_transform`."""
    x = torch.rot90(x, -turns, (-2, -1)) if turns else x
    return x.flip(-1) if flip else x


def match_channels(chw: np.ndarray, channels: int, what: str) -> np.ndarray:
    c = chw.shape[0]
    if c == channels:
        return chw
    if channels == 1 and c == 3 and np.array_equal(chw[0], chw[1]) and np.array_equal(chw[0], chw[2]):
        return chw[:1]  # gray stored as RGB
    kind = {1: "gray", 3: "colour"}
    raise ValueError(
        f"{what} is {kind.get(c, f'{c}-channel')} but the model is {kind.get(channels, channels)}; "
        f"use a {kind.get(c, '')} model"
    )


def load(
    model: str | os.PathLike,
    device: str = "auto",
    gamma: float = 1.0,
    max_memory: int | str | None = None,
    precision: str = "auto",
    ensemble: int = 1,
    refine: int | None = None,
    fusion: str = "local",
) -> Denoiser:
    """Load a checkpoint (``.pt``), a weights file (``.safetensors``) or a bundled model by name.

    ``ensemble`` (1, 2, 4 or 8) averages the outputs on that many mirrored and rotated copies
    of the input: slower by that factor, and usually a little better (about 0.1 dB with 8).
    ``precision`` ``"auto"`` runs a student in bf16 where the device computes bf16 natively
    (2.4 times faster than fp32 for the colour default on such a CPU, within 0.01 dB; ``python
    benchmarks/colour_paths.py``) and everything else
    in fp32; ``"fp32"`` gives the same result on every machine to about 1e-6.
    ``refine``: the passes of random-replacing refinement for a pixel-shuffled model (default 0: off).
    ``fusion``: how a stage-1 model fuses ``mu`` with ``y`` (:data:`FUSIONS`): ``"local"`` (the default)
    with variances measured around each pixel, ``"image"`` over the whole image, ``"heads"`` with the
    model's own (the paper's).

    >>> dbsn.load("run/model.safetensors")   # a model you trained
    >>> dbsn.load("gray")                     # a bundled model (``dbsn list``)
    """
    return Denoiser(load_model(model), device=device, gamma=gamma, max_memory=max_memory,
                    precision=precision, ensemble=ensemble, refine=refine, fusion=fusion)
