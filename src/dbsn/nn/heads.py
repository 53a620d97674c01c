"""Uncertainty heads: the ``var_mu`` head and the noise estimator CNN_est (METHOD.md section 2).

Every head ends in ``k`` output channels that become a (co)variance in one of two forms:

- ``"diag"``: ``k = C`` values ``v``; the variance of channel ``c`` is ``v_c ** 2``
  (gray is the case ``C = 1``). Returned as a ``var_*`` tensor ``(B, C, H, W)``.
- ``"full"``: ``k = C (C + 1) / 2`` values fill a lower-triangular factor ``L``;
  the covariance is ``L L^T``. Returned as a ``cov_*`` tensor ``(B, C, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COV_FORMS = ("diag", "full")


def n_outputs(channels: int, form: str) -> int:
    if form not in COV_FORMS:
        raise ValueError(f"form must be one of {COV_FORMS}, got {form!r}")
    return channels if form == "diag" else channels * (channels + 1) // 2


def _conv_stack(c_in: int, widths: list[int], zero_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, c_out in enumerate(widths):
        layers.append(nn.Conv2d(c_in, c_out, 1))
        if i < len(widths) - 1:
            layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    if zero_last:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def lower_triangular(values: torch.Tensor, channels: int, diag_fn=None) -> torch.Tensor:
    """Fill ``(B, k, H, W)`` values into lower-triangular factors ``(B, H, W, C, C)``."""
    b, _, h, w = values.shape
    rows, cols = torch.tril_indices(channels, channels, device=values.device)
    factor = values.new_zeros(b, h, w, channels, channels)
    factor[..., rows, cols] = values.permute(0, 2, 3, 1)
    if diag_fn is not None:
        d = torch.diagonal(factor, dim1=-2, dim2=-1)
        factor = factor - torch.diag_embed(d) + torch.diag_embed(diag_fn(d))
    return factor


def factor_to_cov(factor: torch.Tensor) -> torch.Tensor:
    """``L L^T`` for factors ``(B, H, W, C, C)``, returned as ``(B, C, C, H, W)``."""
    return (factor @ factor.transpose(-1, -2)).permute(0, 3, 4, 1, 2)


def noise_std_transform(out_n: torch.Tensor) -> torch.Tensor:
    """``softplus(out - 4) + 1e-3``: starts near 0.019 (about 4.6 in 0-255 units)."""
    return F.softplus(out_n - 4.0) + 1e-3


class VarMuHead(nn.Module):
    """Three 1x1 convolutions ``c -> m -> m -> k`` on the D-BSN features ``f``."""

    def __init__(self, width: int, channels: int, form: str, head_width: int):
        super().__init__()
        self.channels, self.form = channels, form
        self.net = _conv_stack(width, [head_width, head_width, n_outputs(channels, form)], zero_last=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """``var_mu`` or ``cov_mu`` per pixel."""
        out_mu = self.net(f)
        if self.form == "diag":
            return out_mu**2
        return factor_to_cov(lower_triangular(out_mu, self.channels))


class NoiseEstimator(nn.Module):
    """CNN_est: five 1x1 convolutions ``C -> m -> m -> m -> m -> k``, the last zero-initialised.

    Being 1x1 it sees one pixel at a time: the noise is assumed spatially
    independent. It returns a (co)variance per pixel; the stage-1 model averages it
    over the image where its noise model has one level per image (AWGN and MG).
    """

    def __init__(self, channels: int, form: str, head_width: int):
        super().__init__()
        self.channels, self.form = channels, form
        self.net = _conv_stack(channels, [head_width] * 4 + [n_outputs(channels, form)], zero_last=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``var_n`` or ``cov_n`` per pixel."""
        out_n = self.net(image)
        if self.form == "diag":
            return noise_std_transform(out_n) ** 2
        return factor_to_cov(lower_triangular(out_n, self.channels, diag_fn=noise_std_transform))
