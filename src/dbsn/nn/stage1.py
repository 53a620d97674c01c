"""The stage-1 model: D-BSN, ``var_mu`` head and noise estimator CNN_est together."""

from __future__ import annotations

import torch
from torch import nn

from .. import linalg
from ..fusion import bayes_fusion
from .bsn import DBSN, DilatedInceptionBlock
from .heads import NoiseEstimator, VarMuHead
from .registry import register_model

NOISE_MODELS = ("awgn", "hg", "mg")


class DBSNModel(nn.Module):
    """D-BSN with its uncertainty heads (METHOD.md sections 1, 2, 4).

    ``noise_model`` decides the heads:

    - ``"awgn"``: CNN_est reads ``y``; its variance is averaged over the image.
    - ``"hg"``: CNN_est reads ``mu`` (signal-dependent noise); one variance per pixel.
    - ``"mg"``: full ``C x C`` covariances, both averaged over the image (colour).

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
    ):
        super().__init__()
        if noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {noise_model!r}")
        if head_width is None:
            head_width = 16 if (in_channels == 1 and noise_model == "awgn") else 32
        self.in_channels, self.noise_model = in_channels, noise_model
        form = "full" if noise_model == "mg" else "diag"
        self.bsn = DBSN(in_channels, width, blocks, mask_mode)
        self.var_mu_head = VarMuHead(width, in_channels, form, head_width)
        self.noise_estimator = NoiseEstimator(in_channels, form, head_width)
        _kaiming_init(self.bsn)
        _kaiming_init(self.var_mu_head)
        for block in self.bsn.modules():
            if isinstance(block, DilatedInceptionBlock):
                # Kaiming alone doubles the activation variance at every residual add
                # (output std near 25 at the paper size); starting each residual branch
                # at zero keeps mu and f near the data's scale from the first step.
                nn.init.zeros_(block.merge[0].weight)

    @property
    def radius(self) -> int:
        return self.bsn.radius

    def head_parameters(self):
        return list(self.var_mu_head.parameters()) + list(self.noise_estimator.parameters())

    def uncertainty(self, y: torch.Tensor, mu: torch.Tensor, f: torch.Tensor):
        """``(s_mu, s_n)``: ``cov_*`` for ``"mg"``, ``var_*`` otherwise."""
        average = self.noise_model != "hg"
        s_mu = self.var_mu_head(f, average=self.noise_model == "mg")
        s_n = self.noise_estimator(mu if self.noise_model == "hg" else y, average=average)
        return s_mu, s_n

    def forward(self, y: torch.Tensor, gamma: float = 1.0) -> dict[str, torch.Tensor]:
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"expected y of shape (B, {self.in_channels}, H, W), got {tuple(y.shape)}")
        mu, f = self.bsn(y)
        s_mu, s_n = self.uncertainty(y, mu, f)
        out = {"mu": mu, "x_hat": bayes_fusion(y, mu, s_mu, s_n, gamma)}
        if self.noise_model == "mg":
            out.update(cov_mu=s_mu, cov_n=s_n)
        out.update(var_mu=linalg.diagonal(s_mu), var_n=linalg.diagonal(s_n))
        return out


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():  # re-apply blind-spot masks after re-initialisation
        if hasattr(m, "mask") and hasattr(m, "freeze_mask"):
            with torch.no_grad():
                m.weight.mul_(m.mask)


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
