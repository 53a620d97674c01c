import pytest
import torch

import dbsn
from dbsn.nn import CentreMaskedConv2d
from dbsn.nn.registry import model_defaults

CONFIGS = [(name, c, nm) for name in dbsn.list_models(kind="blind-spot") for c, nm in ((1, "awgn"), (3, "awgn"), (1, "hg"), (3, "mg"))]


def _gradients_at(model, channels, key="mu", size=23, width=None):
    """d key[p] / d y for each output channel at the centre pixel p of an odd-sized image
    (``size`` x ``width``, ``width >= size``, square by default), cropped to the centred square."""
    torch.manual_seed(1)
    y = torch.rand(1, channels, size, width or size, dtype=torch.float64, requires_grad=True)
    out = model(y)[key]
    p = size // 2
    q = (width or size) // 2
    grads = []
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[0, c, p, q], y, retain_graph=True)
        grads.append(g[0][..., q - p : q + p + 1])
    return grads, p


@pytest.mark.parametrize("name,channels,noise_model", CONFIGS)
def test_blind_spot_by_autograd(name, channels, noise_model):
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=channels, noise_model=noise_model).double()
    grads, p = _gradients_at(model, channels)
    for g in grads:
        assert torch.all(g[:, p, p] == 0), "mu at p must not depend on any channel of y at p"
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            assert g[:, p + dy, p + dx].abs().sum() > 0, f"mu at p must depend on y at offset {(dy, dx)}"


@pytest.mark.parametrize("mask_mode", ["mask", "trimmed"])
@pytest.mark.parametrize("channels", [1, 3])
def test_blind_spot_of_mask_variants_and_var_mu(mask_mode, channels):
    torch.manual_seed(0)
    model = dbsn.create_model("dbsn_tiny", in_channels=channels, noise_model="hg", mask_mode=mask_mode).double()
    for key in ("mu", "var_mu"):
        grads, p = _gradients_at(model, channels, key=key, size=15)
        for g in grads:
            assert torch.all(g[:, p, p] == 0)


def test_unet_blind_spot_and_outputs_agree_with_rotations_batched_or_one_by_one():
    """Training batches the four rotations of a square input in one pass; anything else runs them
    one at a time: the same function, and a non-square image keeps the exact blind spot."""
    torch.manual_seed(0)
    model = dbsn.create_model("bsn_unet", in_channels=3).double()
    y = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    batched = model(y)["mu"]
    with torch.no_grad():
        one_by_one = model(y)["mu"]
    assert torch.allclose(batched, one_by_one, rtol=0, atol=1e-12)
    grads, p = _gradients_at(model, 3, size=21, width=27)  # with gradients but not square: one by one
    for g in grads:
        assert torch.all(g[:, p, p] == 0)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            assert g[:, p + dy, p + dx].abs().sum() > 0


def test_paper_size_and_receptive_field():
    model = dbsn.create_model("dbsn", in_channels=1)
    params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("bsn."))
    assert abs(params - 6.61e6) < 0.05e6
    assert model.radius == 50
    assert model_defaults("dbsn") == {"width": 96, "blocks": 8}


def test_output_shapes_and_keys():
    y = torch.rand(2, 3, 17, 19)
    diag = dbsn.create_model("dbsn_tiny", in_channels=3, noise_model="awgn")(y)
    assert diag["mu"].shape == y.shape and diag["x_hat"].shape == y.shape
    assert diag["var_mu"].shape == y.shape and diag["var_n"].shape == (2, 3, 1, 1)
    full = dbsn.create_model("dbsn_tiny", in_channels=3, noise_model="mg")(y)
    assert full["cov_mu"].shape == (2, 3, 3, 1, 1) and full["cov_n"].shape == (2, 3, 3, 1, 1)
    hg = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="hg")(torch.rand(1, 1, 9, 9))
    assert hg["var_n"].shape == (1, 1, 9, 9)


def test_noise_estimator_starts_near_0_019():
    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn")
    var_n = model(torch.rand(1, 1, 16, 16))["var_n"]
    assert torch.allclose(var_n.sqrt(), torch.tensor(0.0191), atol=2e-4)


def test_masked_conv_centre_stays_zero_after_update():
    conv = CentreMaskedConv2d(2, 2, 3)
    opt = torch.optim.SGD(conv.parameters(), lr=1.0)
    conv(torch.rand(1, 2, 8, 8)).sum().backward()
    opt.step()
    x = torch.zeros(1, 2, 5, 5)
    x[..., 2, 2] = 1.0
    out = conv(x) - conv(torch.zeros_like(x))
    assert torch.all(out[..., 2, 2] == 0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown model"):
        dbsn.create_model("nope")
    with pytest.raises(ValueError, match="noise_model"):
        dbsn.create_model("dbsn_tiny", noise_model="poisson")
    with pytest.raises(ValueError, match="expected y of shape"):
        dbsn.create_model("dbsn_tiny", in_channels=1)(torch.rand(1, 3, 8, 8))


def test_bf16_runs_only_the_dbsn_and_keeps_the_estimator_and_heads_in_fp32():
    torch.manual_seed(0)
    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn").eval()
    y = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        fp32, bf16 = model.pixel_parts(y), model.pixel_parts(y, precision="bf16")
    assert all(v.dtype == torch.float32 for v in bf16.values())
    # CNN_est reads y itself: in fp32 its output does not depend on the D-BSN's precision
    assert torch.equal(fp32["s_n"], bf16["s_n"])
    assert not torch.equal(fp32["mu"], bf16["mu"]) and torch.allclose(fp32["mu"], bf16["mu"], rtol=0.03, atol=0.02)
