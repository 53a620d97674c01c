"""Image quality metrics: PSNR and SSIM on float images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB on floats, over the whole tensor: ``10 log10(range^2 / mse)``."""
    if x_hat.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_hat.shape)} vs {tuple(x.shape)}")
    mse = torch.mean((x_hat.double() - x.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(data_range**2 / mse)).item()


def _gaussian_window(size: int = 11, std: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * std**2))
    return g / g.sum()


def ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window, std 1.5, K1 0.01, K2 0.03.

    Takes ``(C, H, W)`` or ``(H, W)``; channels are scored separately and averaged.
    Only windows that fit inside the image count ("valid" filtering).
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_hat.shape)} vs {tuple(x.shape)}")
    a = x_hat.double().reshape(-1, 1, *x.shape[-2:])
    b = x.double().reshape(-1, 1, *x.shape[-2:])
    g = _gaussian_window()
    size = min(g.numel(), *x.shape[-2:])
    if size < g.numel():
        g = _gaussian_window(size if size % 2 else size - 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean().item()
