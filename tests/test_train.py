import json

import numpy as np
import pytest
import torch

from dbsn.data import PatchSampler, seeded_generator
from dbsn.data.patches import dihedral
from dbsn.metrics import psnr
from dbsn.train import TrainOptions, load_model, read_checkpoint, train
from dbsn.train.stage1 import phase_at

from .conftest import smooth_image


def _options(**kw):
    base = dict(model="dbsn_tiny", steps=40, batch_size=8, patch_size=32, lr=1e-3, val_every=20,
                save_every=1000, val_fraction=0.0, val_patches=8)
    base.update(kw)
    return TrainOptions(**base)


def _clean_folder(path, n=4, size=48, channels=1):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = smooth_image(rng, size, channels).transpose(1, 2, 0).squeeze(-1 if channels == 1 else ())
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path / f"c{i}.png")
    return path


def test_learning_smoke_raises_psnr(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    summary = train(_options(clean=str(clean), noise="awgn:25", steps=150), str(tmp_path / "run"),
                    progress_bar=False)
    val = summary["last_validation"]
    noisy_psnr = 20.2  # AWGN std 25 on [0, 1] images: 20*log10(255/25)
    assert val["val_psnr_mu"] > noisy_psnr + 3
    assert val["val_psnr"] > noisy_psnr + 1


def test_noise_estimator_reaches_the_level_quickly():
    # with the default head learning rate CNN_est must go from 4.9 to 25 within a few hundred steps
    from dbsn.losses import dbsn_loss
    from dbsn.nn import NoiseEstimator

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    estimator = NoiseEstimator(1, "diag", 16)
    opt = torch.optim.Adam(estimator.parameters(), lr=TrainOptions().lr_heads)
    x = torch.rand(8, 1, 32, 32, generator=g)
    for _ in range(300):
        y = x + 25 / 255 * torch.randn(x.shape, generator=g)
        var_n = estimator(y).mean(dim=(-2, -1), keepdim=True)
        loss = dbsn_loss(y, x, torch.zeros_like(y), var_n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(var_n.sqrt().mean().item() * 255 - 25) < 2.5


def test_same_seed_same_weights_and_resume(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=6)
    train(_options(**opts), str(tmp_path / "a"), progress_bar=False)
    train(_options(**opts), str(tmp_path / "b"), progress_bar=False)
    a = read_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = read_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with open(tmp_path / "a" / "log.csv", "a") as fh:  # rows logged after the last checkpoint by a stopped run
        fh.write("7,joint,1.0,0.001,1.0\n8,joint,1.0,0.001,1.0\n")
    summary = train(_options(**{**opts, "steps": 9}), str(tmp_path / "a"), resume=True, progress_bar=False)
    state = read_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert summary["steps"] == 9 and state["step"] == 9
    assert json.loads(state["options"])["steps"] == 9
    rows = (tmp_path / "a" / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 10))
    assert not all(torch.equal(a[k], state["model"][k]) for k in a)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_options(**opts), str(tmp_path / "a"), progress_bar=False)


def test_images_decoded_on_demand_train_the_same_weights(tmp_path):
    clean = _clean_folder(tmp_path / "clean", n=5)
    opts = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=4, val_fraction=0.2)
    train(_options(**opts), str(tmp_path / "memory"), progress_bar=False)
    summary = train(_options(**opts, cache_gb=0), str(tmp_path / "files"), progress_bar=False)
    a = read_checkpoint(tmp_path / "memory" / "checkpoint.pt")["model"]
    b = read_checkpoint(tmp_path / "files" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["images_train"] == 4 and summary["images_val"] == 1
    with pytest.raises(ValueError, match="--cache-gb"):
        train(_options(**opts, cache_gb=-1), str(tmp_path / "bad"), progress_bar=False)


@pytest.mark.parametrize("suffix", ["checkpoint.pt", "model.safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    clean = _clean_folder(tmp_path / "clean")
    train(_options(clean=str(clean), noise="hg:40,10", fixed_noise=True, steps=3), str(tmp_path / "r"),
          progress_bar=False)
    model = load_model(tmp_path / "r" / suffix)
    assert model.config["name"] == "dbsn_tiny" and model.config["noise_model"] == "hg"
    again = load_model(tmp_path / "r" / "checkpoint.pt")
    y = torch.rand(1, 1, 21, 23)
    with torch.no_grad():
        out_a, out_b = model(y), again(y)
    for k in out_a:
        assert torch.equal(out_a[k], out_b[k])


def test_patch_sampler_is_seeded_and_aligned():
    rng = np.random.default_rng(0)
    clean = [torch.from_numpy(smooth_image(rng, 40)) for _ in range(3)]
    noisy = [x + 0.1 for x in clean]
    a = PatchSampler(16, 4, seeded_generator(1), noisy=noisy, clean=clean).sample()
    b = PatchSampler(16, 4, seeded_generator(1), noisy=noisy, clean=clean).sample()
    assert torch.equal(a[0], b[0]) and torch.allclose(a[0], a[1] + 0.1)
    small = PatchSampler(32, 2, seeded_generator(0), noisy=[torch.rand(1, 20, 9)]).sample()[0]
    assert small.shape == (2, 1, 32, 32)
    # patches are cut from the images themselves: the set is not copied
    sampler = PatchSampler(16, 4, seeded_generator(1), noisy=noisy, clean=clean)
    assert all(a is b for a, b in zip(sampler._sets[0], noisy)) and all(a is b for a, b in zip(sampler._sets[1], clean))
    with pytest.raises(ValueError, match="same sizes"):
        PatchSampler(16, 4, seeded_generator(1), noisy=noisy, clean=[x[:, :-1] for x in clean])


def test_dihedral_gives_eight_distinct_views():
    x = torch.arange(9.0).view(1, 3, 3)
    views = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(views) == 8


def test_three_phase_boundaries():
    opts = _options(phase_split=(0.6, 0.1, 0.3))
    assert phase_at(opts, 0.0).name == "mu"
    assert phase_at(opts, 0.65).name == "heads"
    assert phase_at(opts, 0.7).name == "joint"
    assert phase_at(_options(schedule="joint"), 0.0).name == "joint"


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(), "--noisy DIR"),
        (dict(clean="x"), "--noise"),
        (dict(noisy="x", noise="awgn:25"), "only apply to --clean"),
        (dict(noisy="x", steps=None), "exactly one budget"),
        (dict(noisy="x", loss="mse"), "loss"),
    ],
)
def test_options_explain_mistakes(kw, match):
    with pytest.raises(ValueError, match=match):
        _options(**kw).validate()


def test_psnr_reference_value():
    x = torch.zeros(1, 4, 4)
    assert abs(psnr(x + 0.1, x) - 20.0) < 1e-9


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_the_loss_finite(tmp_path, precision):
    """Autocast runs the D-BSN in low precision; the heads and the loss stay fp32 and finite."""
    clean = _clean_folder(tmp_path / "clean")
    opts = _options(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=6, precision=precision,
                    phase_split=(0.34, 0.33, 0.33), device="cpu")
    summary = train(opts, str(tmp_path / precision), progress_bar=False)
    assert summary["steps"] == 6
    rows = (tmp_path / precision / "log.csv").read_text().strip().splitlines()[1:]
    assert {r.split(",")[1] for r in rows} == {"mu", "heads", "joint"}
    assert all(np.isfinite(float(r.split(",")[2])) for r in rows)


def _fit_estimator(source, steps=1000):
    """Train CNN_est on images at levels 5, 15 and 50; return its per-level estimate (0-255 units)."""
    from dbsn.losses import dbsn_loss
    from dbsn.nn import NoiseEstimator

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    estimator = NoiseEstimator(1, "diag", 16)
    opt = torch.optim.Adam(estimator.parameters(), lr=TrainOptions().lr_heads)
    x = torch.rand(6, 1, 32, 32, generator=g) * 0.6 + 0.2
    levels = torch.tensor([5.0, 15.0, 50.0]).repeat(2).view(6, 1, 1, 1) / 255
    for _ in range(steps):
        y = x + levels * torch.randn(x.shape, generator=g)
        var_n = estimator(source(y, x)).mean(dim=(-2, -1), keepdim=True)
        loss = dbsn_loss(y, x, torch.zeros_like(y), var_n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (var_n.sqrt().view(2, 3).mean(0) * 255).tolist()


def test_residual_estimator_input_reads_a_range_of_levels():
    # mu = x here: the residual is the noise itself, and each image's level comes back
    residual = _fit_estimator(lambda y, mu: y - mu)
    assert all(abs(est - true) < 0.15 * true for est, true in zip(residual, (5, 15, 50)))
    # reading y alone, one pixel at a time, the same estimator cannot tell the levels apart as well
    paper = _fit_estimator(lambda y, mu: y)
    assert abs(paper[0] - 5) > abs(residual[0] - 5)


def test_residual_estimator_input_is_refused_for_hg():
    import dbsn

    with pytest.raises(ValueError, match="HG"):
        dbsn.create_model("dbsn_tiny", noise_model="hg", estimator_input="residual")
    model = dbsn.create_model("dbsn_tiny", estimator_input="residual")
    assert model.config["estimator_input"] == "residual"


def test_init_starts_from_trained_weights(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=3)
    train(_options(**opts), str(tmp_path / "a"), progress_bar=False)
    first = read_checkpoint(tmp_path / "a" / "model.safetensors")["model"]
    # heads only (mu frozen) from those weights: the D-BSN comes back unchanged
    train(_options(**opts, init=str(tmp_path / "a" / "model.safetensors"), phase_split=(0, 1, 0),
                   model_kwargs={"estimator_input": "residual"}), str(tmp_path / "b"), progress_bar=False)
    second = read_checkpoint(tmp_path / "b" / "model.safetensors")
    assert second["config"]["estimator_input"] == "residual"
    assert all(torch.equal(first[k], second["model"][k]) for k in first if k.startswith("bsn."))
    assert not all(torch.equal(first[k], second["model"][k]) for k in first if k.startswith("noise_estimator."))
    with pytest.raises(ValueError, match="do not fit"):
        train(_options(**opts, init=str(tmp_path / "a" / "model.safetensors"), model="dbsn_small"),
              str(tmp_path / "c"), progress_bar=False)


def test_init_across_noise_models_keeps_the_dbsn(tmp_path):
    # an MG model (full-covariance heads) from an AWGN one (diagonal heads): the D-BSN carries over
    # exactly, the heads start fresh; HG shares AWGN's heads and takes every tensor
    from dbsn.nn import create_model
    from dbsn.train.checkpoint import init_weights, save_weights

    awgn = create_model("dbsn_tiny", in_channels=3, noise_model="awgn")
    save_weights(tmp_path / "awgn.safetensors", awgn)
    mg = create_model("dbsn_tiny", in_channels=3, noise_model="mg")
    init_weights(mg, str(tmp_path / "awgn.safetensors"))
    assert all(torch.equal(v, mg.state_dict()[k]) for k, v in awgn.state_dict().items() if k.startswith("bsn."))
    hg = create_model("dbsn_tiny", in_channels=3, noise_model="hg")
    init_weights(hg, str(tmp_path / "awgn.safetensors"))
    assert all(torch.equal(v, hg.state_dict()[k]) for k, v in awgn.state_dict().items())
    gray_mg = create_model("dbsn_tiny", in_channels=1, noise_model="mg")
    with pytest.raises(ValueError, match="D-BSN does not fit"):
        init_weights(gray_mg, str(tmp_path / "awgn.safetensors"))


def test_worker_processes_give_a_reproducible_stream(tmp_path):
    from dbsn.data import BatchStream

    rng = np.random.default_rng(0)
    sampler = PatchSampler(16, 4, seeded_generator(1), noisy=[torch.from_numpy(smooth_image(rng, 40))
                                                                for _ in range(3)])

    def first(workers, seed=0, n=4):
        stream = BatchStream(sampler.sample, seeded_generator(1), workers, seed)
        return [stream.next()[0] for _ in range(n)]

    in_process = first(0)
    assert all(torch.equal(a, b) for a, b in zip(in_process, first(0)))
    two = first(2)
    assert all(torch.equal(a, b) for a, b in zip(two, first(2)))  # same workers, same stream
    assert not torch.equal(two[0], two[1])  # the two workers draw different batches
    assert not torch.equal(first(2, seed=5)[0], two[0])


def test_training_with_workers_runs_and_resumes(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = dict(clean=str(clean), noise="awgn:25", steps=4, workers=2)
    summary = train(_options(**opts), str(tmp_path / "r"), progress_bar=False)
    assert summary["steps"] == 4
    summary = train(_options(**{**opts, "steps": 6}), str(tmp_path / "r"), resume=True, progress_bar=False)
    assert summary["steps"] == 6 and summary["options"]["workers"] == 2


def test_heads_phase_on_cached_features_trains_only_the_heads(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=10, phase_split=(1.0, 1.0, 0.0))
    train(_options(**{**opts, "steps": 5, "phase_split": (1.0, 0.0, 0.0)}), str(tmp_path / "mu"), progress_bar=False)
    for name, gb in (("cached", 1.0), ("uncached", 0.0)):
        train(_options(**opts, heads_cache_gb=gb), str(tmp_path / name), progress_bar=False)
    mu, cached, uncached = (read_checkpoint(tmp_path / n / "checkpoint.pt")["model"] for n in ("mu", "cached", "uncached"))
    bsn = [k for k in mu if k.startswith("bsn.")]
    heads = [k for k in mu if not k.startswith("bsn.")]
    assert bsn and heads
    # the heads phase leaves the D-BSN as the mu phase left it, with or without the cache
    assert all(torch.equal(mu[k], cached[k]) and torch.equal(mu[k], uncached[k]) for k in bsn)
    assert not all(torch.equal(mu[k], cached[k]) for k in heads)
    assert not all(torch.equal(cached[k], uncached[k]) for k in heads)


def test_heads_cache_refuses_a_negative_budget():
    with pytest.raises(ValueError, match="heads-cache-gb"):
        _options(clean="x", noise="awgn:25", heads_cache_gb=-1).validate()
