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


# the side of the square window over which measured_variances averages by default: chosen on bsd432
# training images (benchmarks/fusion_window.py) for plain models at AWGN 15, 25 and 50, colour and HG noise,
# and a pixel-shuffled model on camera-pipeline noise
FUSION_WINDOW = 17


def measured_variances(y: torch.Tensor, mu: torch.Tensor, var_n: torch.Tensor, window: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(var_mu, var_n)`` measured on the image itself, per channel: over a ``window`` x ``window``
    neighbourhood of each pixel, or over the whole image where ``window`` is None.

    Where the error of ``mu`` is independent of the noise at each pixel (the blind spot), the expected
    ``(y - mu)^2`` is ``var_mu + var_n``. Given ``var_n`` (read from the image, or the model's own per-pixel
    estimate), ``var_mu`` is the rest: the mean of ``(y - mu)^2 - var_n`` over the window, floored at 0 (where
    the noise alone explains the residual, ``x_hat = mu``). Over the whole image, the fusion's weight on
    ``y - mu``, ``var_mu / (var_mu + var_n)``, is the one scalar weight per channel with the least expected
    squared error; over a window it is that weight for the neighbourhood, so that the fusion leans to ``y``
    on texture, where ``mu`` misses most, and to ``mu`` on flat areas. Windows are cut at the image's edges.

    This replaces the heads' ``var_mu`` at inference, where it measures better. For a pixel-shuffled model
    the heads do not even fit inference: they learned ``var_mu`` and ``var_n`` on the sub-images of the
    training stride. At the smaller inference stride ``mu`` is better than they assume, so ``var_mu`` is
    too large and the fusion leans to ``y``; and where the error of ``mu`` exceeds the noise in training,
    the noise estimate takes it in, and the fusion leans to a poor ``mu``. Measured here, neither happens.

    Args:
        y, mu: the noisy image and the blind-spot estimate ``(B, C, H, W)``.
        var_n: the noise variance per image and channel ``(B, C)``, or per pixel ``(B, C, H, W)``, in [0, 1]
            units.
        window: the side of the window (odd), or None for the whole image.

    Returns:
        ``var_mu``, ``(B, C, H, W)`` for a window, else ``(B, C, 1, 1)``; and ``var_n`` as given, ``(B, C, 1, 1)``
        for a level per image and channel.
    """
    var_n = var_n.to(mu)
    if var_n.dim() == 2:
        var_n = var_n[..., None, None]
    excess = (y.to(mu) - mu) ** 2 - var_n
    if window is None:
        var_mu = excess.mean(dim=(-2, -1), keepdim=True)
    else:
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the fusion window must be an odd number of pixels, got {window}")
        # the window's mean, along rows then columns (a rectangle's mean of means is its mean)
        for size in ((window, 1), (1, window)):
            excess = torch.nn.functional.avg_pool2d(excess, size, stride=1, padding=(size[0] // 2, size[1] // 2),
                                                    count_include_pad=False)
        var_mu = excess
    return var_mu.clamp_min(0), var_n
