"""Small helpers for per-pixel (co)variances, shared by the fusion and the losses.

A *variance* tensor has shape ``(B, C, H, W)`` (a scalar per channel: gray, or a
diagonal colour covariance). A *covariance* tensor has shape ``(B, C, C, H, W)``.
``H`` and ``W`` may be 1 where a (co)variance is one value per image.
"""

from __future__ import annotations

import torch

VAR_FLOOR = 1e-6  # (1e-3)^2: the smallest variance any loss or fusion sees


def is_cov(s: torch.Tensor) -> bool:
    """True for a full covariance ``(B, C, C, H, W)``, False for a variance ``(B, C, H, W)``."""
    if s.dim() == 5:
        return True
    if s.dim() == 4:
        return False
    raise ValueError(f"expected a variance (B, C, H, W) or a covariance (B, C, C, H, W), got shape {tuple(s.shape)}")


def to_matrix(cov: torch.Tensor) -> torch.Tensor:
    """``(B, C, C, H, W) -> (B, H, W, C, C)``, the layout ``torch.linalg`` wants."""
    return cov.permute(0, 3, 4, 1, 2)


def to_vector(v: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W, C, 1)``."""
    return v.permute(0, 2, 3, 1).unsqueeze(-1)


def from_vector(v: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C, 1) -> (B, C, H, W)``."""
    return v.squeeze(-1).permute(0, 3, 1, 2)


def floored(m: torch.Tensor) -> torch.Tensor:
    """Add ``VAR_FLOOR * I`` to matrices ``(..., C, C)`` so that Cholesky always succeeds."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return m + VAR_FLOOR * eye


def cholesky(m: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of floored symmetric matrices ``(..., C, C)``."""
    return torch.linalg.cholesky(floored(0.5 * (m + m.transpose(-1, -2))))


def cholesky_solve(chol: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``S^-1 r`` given the Cholesky factor of ``S``; broadcasts over batch dimensions."""
    z = torch.linalg.solve_triangular(chol, r, upper=False)
    return torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True)


def logdet_from_cholesky(chol: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def diagonal(s: torch.Tensor) -> torch.Tensor:
    """The per-channel variances ``(B, C, H, W)`` of a variance or covariance tensor."""
    return torch.diagonal(s, dim1=1, dim2=2).permute(0, 3, 1, 2) if is_cov(s) else s
