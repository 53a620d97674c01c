"""Training losses of DBSN stage 1 (METHOD.md section 3).

Each function returns a scalar, the mean over pixels and channels. All are finite
by construction: variances are floored and 3x3 systems are solved by Cholesky,
so no term can overflow and nothing is zeroed.
"""

from __future__ import annotations

import torch

from . import linalg

LOSSES = ("l2", "nll", "dbsn")


def l2_loss(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``mean((mu - y)^2)``: pre-training of ``mu``, valid because the network is blind."""
    return torch.mean((mu - y) ** 2)


def _gaussian_terms(y, mu, s_mu, s_n):
    """Per-pixel ``(r^T S^-1 r, log|S|, log|cov_n|, tr(cov_n^-1 cov_mu))`` summed over channels."""
    if linalg.is_cov(s_mu) != linalg.is_cov(s_n):
        raise ValueError("s_mu and s_n must both be variances or both be covariances")
    r = y - mu
    if not linalg.is_cov(s_mu):
        var_mu = s_mu.clamp_min(0)
        var_n = s_n.clamp_min(0) + linalg.VAR_FLOOR  # the same floor the Cholesky path adds
        var = var_mu + var_n
        return (
            (r**2 / var).sum(1),
            torch.log(var).sum(1),
            torch.log(var_n).sum(1),
            (var_mu / var_n).sum(1),
        )
    cov_mu, cov_n = linalg.to_matrix(s_mu), linalg.to_matrix(s_n)
    chol_s = linalg.cholesky(cov_mu + cov_n)
    rv = linalg.to_vector(r)
    quad = (rv * linalg.cholesky_solve(chol_s, rv)).sum((-2, -1))
    chol_n = linalg.cholesky(cov_n)
    trace = torch.diagonal(linalg.cholesky_solve(chol_n, cov_mu), dim1=-2, dim2=-1).sum(-1)
    return quad, linalg.logdet_from_cholesky(chol_s), linalg.logdet_from_cholesky(chol_n), trace


def _mean(per_pixel: torch.Tensor, channels: int) -> torch.Tensor:
    return per_pixel.mean() / channels


def nll_loss(y, mu, s_mu, s_n) -> torch.Tensor:
    r"""Negative log-likelihood ``1/2 r^T S^-1 r + 1/2 log|S|`` with ``S = cov_mu + cov_n``, ``r = y - mu``.

    The constant ``C/2 log(2 pi)`` is left out.
    """
    return gaussian_loss_parts("nll", y, mu, s_mu, s_n)["loss"]


def dbsn_loss(y, mu, s_mu, s_n, trace_weight: float = 1.0) -> torch.Tensor:
    r"""The paper's constrained loss, an upper bound of the NLL.

    ``1/2 r^T S^-1 r + 1/2 log|cov_n| + 1/2 tr(cov_n^-1 cov_mu)``. The trace term
    stops ``cov_mu`` from absorbing the noise, which ``y`` alone cannot tell apart.

    It equals the NLL plus the gap ``1/2 (tr(A) - log|I + A|) >= 0`` with
    ``A = cov_n^-1 cov_mu``. ``trace_weight`` scales that gap: 1 is the paper's loss,
    0 the plain NLL. Between the two, ``cov_mu`` stays close to the error of ``mu``
    (as the NLL makes it) while the gap still breaks the tie in favour of the noise.
    """
    return gaussian_loss_parts("dbsn", y, mu, s_mu, s_n, trace_weight)["loss"]


def gaussian_loss(name: str, y, mu, s_mu, s_n, trace_weight: float = 1.0) -> torch.Tensor:
    """``nll_loss`` or ``dbsn_loss`` by name."""
    return gaussian_loss_parts(name, y, mu, s_mu, s_n, trace_weight)["loss"]


LOSSES = ("dbsn", "nll")  # the constrained DBSN loss, the plain NLL


def gaussian_loss_parts(name: str, y, mu, s_mu, s_n, trace_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{"loss": the named loss, "nll": the NLL, "gap": the DBSN loss's gap over it}``; the parts
    detached, for the training log (the gap unweighted: ``loss = nll + trace_weight * gap`` for
    ``"dbsn"``, ``nll`` for ``"nll"``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected 'nll' or 'dbsn'")
    quad, logdet_s, logdet_n, trace = _gaussian_terms(y, mu, s_mu, s_n)
    gap = logdet_n + trace - logdet_s
    c = y.shape[1]
    if name == "nll":
        loss = _mean(0.5 * (quad + logdet_s), c)
    else:
        loss = _mean(0.5 * (quad + logdet_s + trace_weight * gap), c)
    with torch.no_grad():
        return {"loss": loss, "nll": _mean(0.5 * (quad + logdet_s), c), "gap": _mean(0.5 * gap, c)}
