import pytest
import torch
from torch import nn

from dbsn.train import TrainOptions, read_checkpoint, train
from dbsn.train.ema import EMA

from .test_train import _clean_folder, _options


def test_average_follows_the_formula_and_restores_the_raw_weights():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    ema = EMA(model, decay=0.5)
    expected = torch.zeros(1, 2)
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        d = min(0.5, (1.0 + t) / (10.0 + t))
        expected = d * expected + (1 - d) * value
        ema.update(model)
    assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied(model):
        assert torch.allclose(model.weight, expected)
    assert torch.equal(model.weight, torch.full((1, 2), 8.0))


def test_state_round_trip_and_mismatch():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    ema_a, ema_b = EMA(a, 0.9), EMA(b, 0.9)
    ema_a.update(a)
    ema_b.load_state_dict(ema_a.state_dict())
    assert ema_b.updates == 1 and all(torch.equal(ema_a.shadow[k], ema_b.shadow[k]) for k in ema_a.shadow)
    with pytest.raises(ValueError, match="does not match"):
        EMA(nn.Linear(3, 2, bias=False), 0.9).load_state_dict(ema_a.state_dict())


def test_training_saves_the_average_and_resumes_it(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=6, ema=0.9)
    train(_options(**opts), str(tmp_path / "r"), progress_bar=False)
    state = read_checkpoint(tmp_path / "r" / "checkpoint.pt")
    saved = read_checkpoint(tmp_path / "r" / "model.safetensors")["model"]
    assert state["ema"]["updates"] == 6
    # the shared weights are the average, the checkpoint keeps the raw ones for --resume
    assert all(torch.equal(saved[k], state["ema"]["shadow"][k]) for k in state["ema"]["shadow"])
    assert not all(torch.equal(saved[k], state["model"][k]) for k in state["ema"]["shadow"])

    train(_options(**{**opts, "steps": 8}), str(tmp_path / "r"), resume=True, progress_bar=False)
    assert read_checkpoint(tmp_path / "r" / "checkpoint.pt")["ema"]["updates"] == 8


def test_decay_outside_the_range_is_refused():
    with pytest.raises(ValueError, match="--ema"):
        TrainOptions(clean="x", noise="awgn:25", steps=1, ema=1.0).validate()
