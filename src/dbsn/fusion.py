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


def split_at_level(s_mu: torch.Tensor, s_n: torch.Tensor, var_level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(s_mu, s_n)`` split again where an independent reading of the noise variance is lower.

    The likelihood fits the sum ``cov_mu + cov_n`` (the variance of ``y - mu``); how it is split
    between the error of ``mu`` and the noise, only the estimator's design and the DBSN loss's
    trace term decide. Where the error of ``mu`` exceeds the noise (light noise, a model early in
    training, a pixel-shuffled one), the trace term pushes that error into ``cov_n``: the noise
    estimate inflates, ``cov_mu`` shrinks, and the fusion trusts a poor ``mu`` over a good ``y``.

    Here ``cov_n`` is scaled by ``k = min(var_level / mean(var_n), 1)`` per image and the rest given to
    ``cov_mu``: ``(cov_mu + (1 - k) cov_n, k cov_n)``, the same sum, both still positive semi-definite.
    It only ever lowers the noise share, so the fusion moves towards ``y``, never away from it.

    Args:
        s_mu, s_n: per-pixel or image-averaged variances ``(B, C, H, W)`` or covariances ``(B, C, C, H, W)``.
        var_level: the noise variance per image ``(B,)``, in [0, 1] units.
    """
    var_n = linalg.diagonal(s_n).flatten(1).mean(1)
    k = (var_level.to(var_n) / var_n.clamp_min(linalg.VAR_FLOOR)).clamp(max=1.0)
    k = k.view(-1, *([1] * (s_n.dim() - 1)))
    return s_mu + (1 - k) * s_n, k * s_n
