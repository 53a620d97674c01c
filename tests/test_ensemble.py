"""Self-ensemble: the average over mirrored and rotated copies, undone exactly, for every model kind."""

import numpy as np
import pytest
import torch
from PIL import Image

from dbsn.cli import main
from dbsn.denoiser import Denoiser
from dbsn.hub import save_weights

from .test_tiling import CASES, _model


def _by_hand(model, y: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` of: identity, mirror, half turn, both, then the quarter turns; each undone and averaged."""
    ops = [
        (lambda t: t, lambda t: t),
        (lambda t: t.flip(-1), lambda t: t.flip(-1)),
        (lambda t: t.flip(-1).flip(-2), lambda t: t.flip(-1).flip(-2)),
        (lambda t: t.flip(-2), lambda t: t.flip(-2)),
        (lambda t: t.transpose(-1, -2).flip(-2), lambda t: t.flip(-2).transpose(-1, -2)),
        (lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
        (lambda t: t.transpose(-1, -2).flip(-1), lambda t: t.flip(-1).transpose(-1, -2)),
        (lambda t: t.flip(-1).flip(-2).transpose(-1, -2), lambda t: t.transpose(-1, -2).flip(-1).flip(-2)),
    ]
    plain = Denoiser(model, device="cpu")
    outs = [plain.predict(forward(y)) for forward, _ in ops[:n]]
    return {k: sum(back(o[k]) if o[k].dim() >= 4 else o[k] for o, (_, back) in zip(outs, ops)) / n
            for k in outs[0]}


@pytest.mark.parametrize("name,channels,kwargs", CASES[:3] + CASES[4:])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_ensemble_is_the_average_of_the_undone_copies(name, channels, kwargs, n):
    model = _model(name, channels, kwargs)
    y = torch.rand(1, channels, 29, 41, generator=torch.Generator().manual_seed(1))
    got = Denoiser(model, device="cpu", ensemble=n).predict(y)
    want = _by_hand(model, y, n)
    assert got.keys() == want.keys()
    for k in got:
        target = want[k].clamp(0, 1) if k == "x_hat" else want[k]
        assert got[k].shape == target.shape
        torch.testing.assert_close(got[k], target, rtol=1e-5, atol=1e-5)


def test_full_ensemble_commutes_with_every_mirror_and_turn():
    model = _model("mwcnn_small", 1, {})
    y = torch.rand(1, 1, 24, 40, generator=torch.Generator().manual_seed(2))
    plain, full = Denoiser(model, device="cpu"), Denoiser(model, device="cpu", ensemble=8)
    turned = lambda t: torch.rot90(t, 1, (-2, -1))  # noqa: E731
    mirrored = lambda t: t.flip(-1)  # noqa: E731
    # a random network is not symmetric, so one pass does not commute; the average over the group does
    assert (plain.predict(turned(y))["x_hat"] - turned(plain.predict(y)["x_hat"])).abs().max() > 1e-3
    for g in (turned, mirrored):
        torch.testing.assert_close(full.predict(g(y))["x_hat"], g(full.predict(y)["x_hat"]), rtol=1e-5, atol=1e-5)


def test_ensemble_rejects_other_counts():
    with pytest.raises(ValueError, match="ensemble must be one of"):
        Denoiser(_model("unet_small", 1, {}), device="cpu", ensemble=3)


def test_cli_ensemble(tmp_path, capsys):
    weights = tmp_path / "student.safetensors"
    save_weights(weights, _model("unet_small", 1, {}))
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 34)) * 255).astype(np.uint8)).save(clean / "c.png")
    assert main(["-q", "denoise", "--model", str(weights), str(clean), "--ensemble", "4",
                 "-o", str(tmp_path / "out")]) == 0
    x = np.asarray(Image.open(clean / "c.png"))
    want = Denoiser(_model("unet_small", 1, {}), device="cpu", ensemble=4).denoise(x)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "c.png")), want)
    assert main(["-q", "evaluate", "--model", str(weights), "--clean", str(clean), "--noise", "awgn:25",
                 "--ensemble", "8"]) == 0
    assert "mean" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["-q", "evaluate", "--model", str(weights), "--clean", str(clean), "--noise", "awgn:25",
              "--ensemble", "3"])
    assert err.value.code == 2
