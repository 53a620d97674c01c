"""Pixel-shuffle blind spots for spatially correlated noise (after AP-BSN, Lee et al., CVPR 2022).

A blind spot of one pixel assumes noise independent from pixel to pixel. Camera noise after
demosaicking is correlated over a few pixels, so a blind-spot network reads the noise of a pixel
from its neighbours and keeps it. Pixel-shuffle downsampling by a stride ``s`` splits the image into
``s * s`` sub-images of every ``s``-th pixel: inside each, neighbours are ``s`` pixels apart in the
image, beyond the correlation. The blind-spot backbone runs on the sub-images (stacked in the
batch) and its outputs are shuffled back.

The blind spot stays exact: an output pixel depends only on pixels of its own sub-image, and not
on itself. The image is padded at its bottom and right to a multiple of ``s`` with zeros, not by
reflection (a reflected copy of a pixel can fall into its own sub-image).

Asymmetric strides (AP-BSN): a large one in training (5) breaks the correlation; a small one at
inference (2) keeps more detail, where the network, trained on sub-images, meets finer ones.
:class:`PixelShuffleBSN` takes the training stride in training mode and the inference stride in
evaluation mode, unless a call names its own.

What the Bayes fusion (METHOD.md section 4) assumes here: ``y = x + n`` with ``n`` of covariance
``cov_n`` at each pixel, and ``mu - x`` of covariance ``cov_mu`` independent of ``n``. Pixel shuffle keeps
the independence (the sub-image neighbours ``mu`` reads lie beyond the correlation), and ``cov_n`` is the
noise's marginal covariance at one pixel, whatever its correlation with the neighbours: the fusion of a
pixel needs nothing else. What breaks is the heads' split of ``cov_mu + cov_n``: they learned it on the
sub-images of the training stride, where ``mu`` is poorer than at the inference stride, and where its error
exceeds the noise the noise estimate takes it in. :class:`dbsn.Denoiser` therefore fuses a shuffled model
with variances measured on the image itself (:func:`dbsn.fusion.measured_variances`), even with
``fusion="heads"``: the noise's, one per image and channel read from flat blocks, and ``mu``'s, the rest of
the variance of ``y - mu`` around each pixel (or over the whole image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pd_down(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, C, H, W)``, H and W multiples of ``stride``, to ``(B * s * s, C, H / s, W / s)``: sub-image
    ``(i, j)`` of image ``b`` (pixels ``(i + s r, j + s c)``) at batch index ``(b * s + i) * s + j``."""
    b, c, h, w = x.shape
    s = stride
    x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b * s * s, c, h // s, w // s)


def pd_up(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The inverse of :func:`pd_down`."""
    n, c, h, w = x.shape
    s = stride
    x = x.reshape(n // (s * s), s, s, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n // (s * s), c, h * s, w * s)


class PixelShuffleBSN(nn.Module):
    """A blind-spot backbone ``y -> (mu, f)`` run on pixel-shuffled sub-images.

    Args:
        inner: the backbone (the D-BSN, the blind-spot U-Net, ...).
        stride: the stride in training mode.
        stride_infer: the stride in evaluation mode (default: ``min(2, stride)``).
    """

    def __init__(self, inner: nn.Module, stride: int, stride_infer: int | None = None):
        super().__init__()
        stride_infer = min(2, stride) if stride_infer is None else stride_infer
        if stride < 1 or stride_infer < 1:
            raise ValueError(f"pixel-shuffle strides must be at least 1, got {stride} and {stride_infer}")
        self.inner, self.stride, self.stride_infer = inner, int(stride), int(stride_infer)
        self.width = inner.width
        self.MEMORY_FLOATS = inner.MEMORY_FLOATS

    @property
    def radius(self) -> int:
        """The inner radius in sub-image pixels, ``s`` image pixels each, at the larger stride."""
        return self.inner.radius * max(self.stride, self.stride_infer)

    @property
    def align(self) -> int:
        """Tiles start at multiples of both strides, so that every tile cuts the sub-images the same way."""
        return math.lcm(self.stride, self.stride_infer)

    def initialise(self) -> None:
        self.inner.initialise()

    def forward(self, y: torch.Tensor, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s = stride if stride is not None else (self.stride if self.training else self.stride_infer)
        if s == 1:
            return self.inner(y)
        h, w = y.shape[-2:]
        y = F.pad(y, (0, (-w) % s, 0, (-h) % s))
        mu, f = self.inner(pd_down(y, s))
        return pd_up(mu, s)[..., :h, :w], pd_up(f, s)[..., :h, :w]
