import numpy as np
import pytest
import torch

from dbsn.noise import AWGN, HG, MG, NumpyDraw, TorchDraw, parse_noise


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_parse_specs():
    assert parse_noise("awgn:25") == AWGN(25.0)
    assert parse_noise("awgn:5-50") == AWGN(5.0, 50.0)
    assert parse_noise("hg:40,10") == HG(40.0, 10.0, independent=False)
    assert parse_noise("hg-indep:40,10") == HG(40.0, 10.0, independent=True)
    assert parse_noise("mg") == MG(75.0)
    assert parse_noise("mg-official").official
    for spec in ("awgn:25", "awgn:5-50", "hg:40,10", "hg-indep:40,10", "mg:75", "mg-official:75"):
        assert parse_noise(spec).spec == spec


@pytest.mark.parametrize("bad", ["awgn", "awgn:x", "awgn:50-5", "hg:40", "poisson:3", "awgn:-1"])
def test_bad_specs_raise_clearly(bad):
    with pytest.raises(ValueError, match="noise spec"):
        parse_noise(bad)


def test_awgn_variance_and_seed():
    x = torch.full((1, 256, 256), 0.5)
    n = parse_noise("awgn:25").add(x, gen()) - x
    assert abs(n.std().item() * 255 - 25) < 0.3
    assert abs(n.mean().item()) < 1e-3
    assert torch.equal(parse_noise("awgn:25").add(x, gen(3)), parse_noise("awgn:25").add(x, gen(3)))
    assert not torch.equal(parse_noise("awgn:25").add(x, gen(3)), parse_noise("awgn:25").add(x, gen(4)))


def test_awgn_range_draws_one_level_per_image_within_range():
    x = torch.zeros(40, 1, 64, 64)
    stds = (parse_noise("awgn:5-50").add(x, gen()) - x).flatten(1).std(1) * 255
    assert stds.min() > 4.5 and stds.max() < 51
    assert stds.std() > 5  # levels vary between images


@pytest.mark.parametrize("independent", [False, True])
def test_hg_variance_follows_signal(independent):
    model = HG(40.0, 10.0, independent=independent)
    x = torch.linspace(0, 1, 8).view(1, 8, 1).expand(1, 8, 20000).contiguous()
    n = model.add(x, gen()) - x
    expected = model.var(x[0, :, 0])
    measured = n[0].var(dim=1)
    assert torch.allclose(measured, expected, rtol=0.05)


def test_hg_official_form_has_z1_equal_z2():
    x = torch.rand(1, 32, 32)
    n = HG(40.0, 10.0).noise(x.double(), TorchDraw(gen()))
    z = TorchDraw(gen()).normal((1, 32, 32))
    assert torch.allclose(n, (40 * x.double() + 10) / 255 * z)


def test_mg_covariance_matches_the_drawn_matrix():
    model = MG(75.0)
    x = torch.zeros(3, 256, 256)
    n = model.noise(x.double(), TorchDraw(gen(5)))
    cov = model.covariance(3, TorchDraw(gen(5)))  # the same draws come first
    measured = torch.cov(n.reshape(3, -1))
    assert torch.allclose(measured, cov, atol=0.05 * cov.diagonal().max().item())
    evals = torch.linalg.eigvalsh(cov)
    assert evals.min() > -1e-12 and evals.max() <= (75 / 255) ** 2 + 1e-12


def test_mg_official_form_is_elementwise_absolute():
    a = MG(75.0).covariance(3, TorchDraw(gen(2)))
    b = MG(75.0, official=True).covariance(3, TorchDraw(gen(2)))
    assert torch.allclose(b, a.abs())


def test_protocol_matches_numpy_reference_gray_and_colour():
    rng = np.random.default_rng(1)
    for shape in ((1, 12, 10), (3, 12, 10)):
        x = rng.random(shape, dtype=np.float32)
        y = parse_noise("awgn:25").add_protocol(torch.from_numpy(x), seed=0).numpy()
        hwc = x[0] if shape[0] == 1 else np.moveaxis(x, 0, -1)
        np.random.seed(0)
        ref = hwc + np.random.normal(0, 25 / 255, hwc.shape)
        ref = ref[None] if shape[0] == 1 else np.moveaxis(ref, -1, 0)
        np.testing.assert_allclose(y, ref.astype(np.float32), atol=1e-6)
        # not clipped: some pixels near 0 or 1 are pushed out of [0, 1], and they stay there, as in the reference
        assert ((y < 0) | (y > 1)).any()
    bright = torch.ones(1, 64, 64)
    assert parse_noise("awgn:25").add_protocol(bright).max() > 1.0


def test_numpy_draw_is_seeded():
    a = NumpyDraw(0).normal((3, 4, 5))
    b = NumpyDraw(0).normal((3, 4, 5))
    assert torch.equal(a, b)
