import torch

from dbsn import bayes_fusion


def _inputs(c=3, h=6, w=7):
    torch.manual_seed(0)
    return torch.rand(2, c, h, w), torch.rand(2, c, h, w)


def _diag_to_cov(var):
    return torch.diag_embed(var.permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)


def test_var_mu_to_zero_gives_mu():
    y, mu = _inputs()
    out = bayes_fusion(y, mu, torch.zeros_like(y), torch.full_like(y, 0.01))
    assert torch.allclose(out, mu)


def test_var_n_to_zero_gives_y():
    y, mu = _inputs()
    out = bayes_fusion(y, mu, torch.full_like(y, 0.01), torch.full_like(y, 1e-12))
    assert torch.allclose(out, y, atol=1e-3)
    out = bayes_fusion(y, mu, torch.full_like(y, 1e6), torch.full_like(y, 0.01))
    assert torch.allclose(out, y, atol=1e-6)


def test_equal_variances_average():
    y, mu = _inputs(c=1)
    out = bayes_fusion(y, mu, torch.full_like(y, 0.02), torch.full_like(y, 0.02))
    assert torch.allclose(out, (y + mu) / 2, atol=1e-4)  # up to the variance floor


def test_diagonal_covariance_path_equals_scalar_path():
    y, mu = _inputs()
    var_mu = torch.rand_like(y) * 0.01
    var_n = torch.rand(2, 3, 1, 1) * 0.01 + 1e-3
    scalar = bayes_fusion(y, mu, var_mu, var_n, gamma=0.9)
    full = bayes_fusion(y, mu, _diag_to_cov(var_mu), _diag_to_cov(var_n.expand_as(y)), gamma=0.9)
    assert torch.allclose(scalar, full, atol=1e-5)


def test_full_covariance_matches_information_form():
    torch.manual_seed(1)
    y, mu = _inputs(h=1, w=1)
    a, b = torch.randn(2, 3, 3), torch.randn(2, 3, 3)
    cov_mu = a @ a.mT + 0.1 * torch.eye(3)
    cov_n = b @ b.mT + 0.1 * torch.eye(3)
    out = bayes_fusion(y, mu, cov_mu[..., None, None], cov_n[..., None, None])
    inv = torch.linalg.inv
    expected = inv(inv(cov_mu) + inv(cov_n)) @ (inv(cov_mu) @ mu[..., 0, 0, None] + inv(cov_n) @ y[..., 0, 0, None])
    assert torch.allclose(out[..., 0, 0], expected[..., 0], atol=1e-4)
