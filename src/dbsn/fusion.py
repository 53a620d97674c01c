"""Bayes fusion of the blind-spot estimate with the noisy pixel (METHOD.md section 4).

This module is the one place where the posterior-mean formula lives.
"""

from __future__ import annotations

import torch

from . import linalg


def bayes_fusion(
    y: torch.Tensor,
    mu: torch.Tensor,
    s_mu: torch.Tensor,
    s_n: torch.Tensor,
    gamma: float = 1.0,
) -> torch.Tensor:
    r"""Posterior mean ``x_hat`` of the clean image.

    Scalar (per channel): ``x_hat = (var_n mu + var_mu y) / (var_mu + var_n)``.
    Full covariance: ``x_hat = mu + cov_mu (cov_mu + cov_n)^-1 (y - mu)``, which equals
    ``(cov_mu^-1 + cov_n^-1)^-1 (cov_mu^-1 mu + cov_n^-1 y)``.

    Args:
        y: noisy image ``(B, C, H, W)``.
        mu: blind-spot estimate ``(B, C, H, W)``.
        s_mu: ``var_mu`` ``(B, C, H, W)`` or ``cov_mu`` ``(B, C, C, H, W)``; H, W may be 1.
        s_n: ``var_n`` or ``cov_n``, in the same form as ``s_mu``.
        gamma: factor on the noise (co)variance, in [0.9, 1] at test time in the paper.

    Returns:
        ``x_hat`` ``(B, C, H, W)``, not clamped.
    """
    if linalg.is_cov(s_mu) != linalg.is_cov(s_n):
        raise ValueError("s_mu and s_n must both be variances or both be covariances")
    s_n = gamma * s_n
    if not linalg.is_cov(s_mu):
        var_mu, var_n = s_mu.clamp_min(0), s_n.clamp_min(0) + linalg.VAR_FLOOR  # as the Cholesky path
        return mu + var_mu / (var_mu + var_n) * (y - mu)
    cov_mu, cov_n = linalg.to_matrix(s_mu), linalg.to_matrix(s_n)
    chol = linalg.cholesky(cov_mu + cov_n)
    gain = cov_mu @ linalg.cholesky_solve(chol, linalg.to_vector(y - mu))
    return mu + linalg.from_vector(gain)


def measured_variances(y: torch.Tensor, mu: torch.Tensor, var_n: torch.Tensor, full: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(s_mu, s_n)`` measured on the image itself, one variance per image and channel.

    Where the error of ``mu`` is independent of the noise at each pixel (the blind spot), the variance
    of ``y - mu`` is ``var_mu + var_n``. Given ``var_n`` (read from the image), ``var_mu`` is the rest:
    ``mean((y - mu)^2) - var_n`` over the image, per channel, floored at 0 (where the noise alone explains
    the residual, ``x_hat = mu``). The fusion's weight on ``y - mu``, ``var_mu / (var_mu + var_n)``, is then
    the one scalar weight per channel with the least expected squared error over the image.

    For a pixel-shuffled model, whose heads do not fit inference: they learned ``var_mu`` and ``var_n``
    on the sub-images of the training stride. At the smaller inference stride ``mu`` is better than
    they assume, so ``var_mu`` is too large and the fusion leans to ``y``; and where the error of
    ``mu`` exceeds the noise in training, the noise estimate takes it in, and the fusion leans to a
    poor ``mu``. Measured here, neither happens.

    Args:
        y, mu: the noisy image and the blind-spot estimate ``(B, C, H, W)``.
        var_n: the noise variance per image and channel ``(B, C)``, in [0, 1] units.
        full: give diagonal covariances ``(B, C, C, 1, 1)`` (for full-covariance heads) instead of
            variances ``(B, C, 1, 1)``.
    """
    var_n = var_n.to(mu)
    var_mu = ((y.to(mu) - mu) ** 2).mean(dim=(-2, -1)).sub(var_n).clamp_min(0)
    if full:
        return torch.diag_embed(var_mu)[..., None, None], torch.diag_embed(var_n)[..., None, None]
    return var_mu[..., None, None], var_n[..., None, None]
