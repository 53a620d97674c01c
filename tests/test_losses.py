import pytest
import torch

from dbsn.losses import dbsn_loss, l2_loss, nll_loss


def _residual(var, n=200_000, c=1):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(1, c, n // 100, 100, generator=g) * var**0.5
    return r, torch.zeros_like(r)


@pytest.mark.parametrize("loss", [nll_loss, dbsn_loss])
def test_minimised_near_true_noise_variance(loss):
    true_var = (25 / 255) ** 2
    y, mu = _residual(true_var)
    grid = true_var * torch.logspace(-1, 1, 81)
    values = torch.stack([loss(y, mu, torch.zeros(1, 1, 1, 1), v.view(1, 1, 1, 1)) for v in grid])
    best = grid[values.argmin()]
    assert abs(best / true_var - 1) < 0.06


def test_dbsn_loss_prefers_noise_variance_over_var_mu():
    # y alone cannot tell var_mu from var_n: the NLL is the same, the trace term is not
    true_var = 0.01
    y, mu = _residual(true_var)
    as_noise = dbsn_loss(y, mu, torch.zeros_like(y), torch.full((1, 1, 1, 1), true_var))
    as_mu = dbsn_loss(y, mu, torch.full_like(y, 0.9 * true_var), torch.full((1, 1, 1, 1), 0.1 * true_var))
    assert as_noise < as_mu
    nll_a = nll_loss(y, mu, torch.zeros_like(y), torch.full((1, 1, 1, 1), true_var))
    nll_b = nll_loss(y, mu, torch.full_like(y, 0.9 * true_var), torch.full((1, 1, 1, 1), 0.1 * true_var))
    assert torch.allclose(nll_a, nll_b)


@pytest.mark.parametrize("loss", [nll_loss, dbsn_loss])
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e12, 1e30])
def test_finite_at_extreme_variances_scalar_and_full(loss, scale):
    y = torch.rand(2, 3, 4, 4, requires_grad=True)
    mu = torch.rand(2, 3, 4, 4)
    var = torch.full_like(mu, scale)
    for s_mu, s_n in ((var, var), (var, torch.zeros_like(var))):
        value = loss(y, mu, s_mu, s_n)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(y.grad).all()
    cov = scale * torch.eye(3).view(1, 3, 3, 1, 1).expand(2, 3, 3, 4, 4)
    value = loss(y, mu, cov, cov)
    assert torch.isfinite(value)


@pytest.mark.parametrize("loss", [nll_loss, dbsn_loss])
def test_full_diagonal_equals_scalar(loss):
    torch.manual_seed(0)
    y, mu = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    var_mu, var_n = torch.rand_like(y) * 0.01, torch.rand(2, 3, 1, 1) * 0.01 + 1e-3
    diag = lambda v: torch.diag_embed(v.expand_as(y).permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)  # noqa: E731
    assert torch.allclose(loss(y, mu, var_mu, var_n), loss(y, mu, diag(var_mu), diag(var_n)), rtol=1e-4, atol=1e-5)


def test_l2():
    assert l2_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0


def test_trace_weight_interpolates_between_nll_and_paper_loss():
    torch.manual_seed(0)
    y, mu = torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6)
    var_mu, var_n = torch.rand_like(y) * 0.02, torch.full((2, 1, 1, 1), 0.01)
    v = var_n + 1e-6  # the variance floor
    paper = (0.5 * ((y - mu) ** 2 / (var_mu + v) + torch.log(v) + var_mu / v)).mean()
    assert torch.allclose(dbsn_loss(y, mu, var_mu, var_n), paper)
    assert torch.allclose(dbsn_loss(y, mu, var_mu, var_n, trace_weight=0.0), nll_loss(y, mu, var_mu, var_n))
    half = dbsn_loss(y, mu, var_mu, var_n, trace_weight=0.5)
    assert nll_loss(y, mu, var_mu, var_n) < half < paper


def test_small_trace_weight_keeps_var_mu_near_the_error_of_mu():
    # the per-pixel optimum of var_mu: the NLL gives e^2 - var_n, the paper's loss much less
    e2, var_n = 0.05, 0.01
    grid = torch.linspace(0, 0.06, 6001)
    r2 = torch.full((1, 1, 1, 1), e2)
    def best(weight):
        values = [dbsn_loss(r2.sqrt(), torch.zeros_like(r2), g.view(1, 1, 1, 1), torch.full((1, 1, 1, 1), var_n),
                            trace_weight=weight) for g in grid]
        return grid[torch.stack(values).argmin()].item()
    assert abs(best(0.0) - (e2 - var_n)) < 1e-3
    assert best(1.0) < 0.5 * (e2 - var_n)
    assert best(0.1) > 0.65 * (e2 - var_n)  # 0.72 in closed form
