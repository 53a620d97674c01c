import pytest
import torch

import dbsn
from dbsn.nn import haar_dwt, haar_iwt
from dbsn.train import load_model, save_weights

STUDENTS = dbsn.list_models(kind="student")
SMALL = {"mwcnn": dict(widths=(8, 12, 16), depth=2)}  # the paper size is too slow for every test case


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(17, 23), (1, 9), (8, 8)])
def test_students_keep_shape_on_any_size(name, channels, size):
    model = dbsn.create_model(name, in_channels=channels, **SMALL.get(name, {}))
    y = torch.rand(2, channels, *size)
    assert model(y)["x_hat"].shape == y.shape


@pytest.mark.parametrize("name", STUDENTS)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=3, **SMALL.get(name, {}))
    model(torch.rand(1, 3, 19, 21))["x_hat"].square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", STUDENTS)
def test_student_checkpoint_round_trip(name, tmp_path):
    model = dbsn.create_model(name, in_channels=1, **SMALL.get(name, {})).eval()
    save_weights(tmp_path / "s.safetensors", model)
    again = load_model(tmp_path / "s.safetensors")
    y = torch.rand(1, 1, 13, 15)
    with torch.no_grad():
        assert torch.equal(model(y)["x_hat"], again(y)["x_hat"])


def test_haar_is_orthonormal_and_invertible():
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    z = haar_dwt(x)
    assert z.shape == (2, 12, 4, 5)
    assert torch.allclose(haar_iwt(z), x)
    assert torch.allclose(z.square().sum(), x.square().sum())


def test_paper_mwcnn_size():
    params = sum(p.numel() for p in dbsn.create_model("mwcnn").parameters())
    assert 10e6 < params < 25e6


@pytest.mark.parametrize("h,w", [(13, 21), (9, 16), (8, 8), (1, 5), (3, 1), (1, 1)])
def test_padding_reflects_so_the_noise_stays_noise(h, w):
    # a repeated edge row is a strip of identical values the students never saw in training
    from dbsn.nn.students import _pad_to_multiple

    y = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    padded, size = _pad_to_multiple(y, 8)
    assert size == (h, w) and padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert torch.equal(padded[..., :h, :w], y)
    if h >= 8 and w >= 8:
        assert torch.equal(padded, torch.nn.functional.pad(y, (0, (-w) % 8, 0, (-h) % 8), mode="reflect"))
    else:  # too short to reflect: the edge is repeated, never an index outside the image
        assert torch.isin(padded, y).all()
