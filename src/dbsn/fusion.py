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
