import json
import math

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
                save_every=1000, val_fraction=0.0, val_patches=8, precision="fp32")  # the same on every CPU
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
    # the default recipe (phases 0.8/0.2/0, trace weight 0.1): 200 steps of mu, 50 of the heads
    summary = train(_options(clean=str(clean), noise="awgn:25", steps=250), str(tmp_path / "run"),
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


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_where_the_device_has_it(tmp_path, monkeypatch, native):
    """The default ``auto`` becomes bf16 or fp32 once, before training; the checkpoint records which."""
    import dbsn.runtime

    monkeypatch.setattr(dbsn.runtime, "fast_bf16", lambda device: native)
    assert TrainOptions().precision == "auto"
    clean = _clean_folder(tmp_path / "clean")
    summary = train(_options(clean=str(clean), noise="awgn:25", steps=2, precision="auto", device="cpu"),
                    str(tmp_path / "run"), progress_bar=False)
    expected = "bf16" if native else "fp32"
    assert summary["options"]["precision"] == expected
    assert json.loads(read_checkpoint(tmp_path / "run" / "checkpoint.pt")["options"])["precision"] == expected


def test_heads_cache_stops_building_at_its_time_limit_but_keeps_enough_crops():
    """Under a time budget the cache of the heads phase is cut short (a short run keeps time for its
    heads); without one it holds its full count, the same on every run."""
    import dbsn
    from dbsn.train.stage1 import HeadsCache

    torch.manual_seed(0)
    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn").eval()
    images = [torch.rand(1, 64, 64, generator=seeded_generator(i)) for i in range(8)]
    sampler = PatchSampler(16, 4, seeded_generator(0), noisy=images)
    full = HeadsCache(model, sampler, 1.0, "fp32", torch.device("cpu"), seed=3)
    again = HeadsCache(model, sampler, 1.0, "fp32", torch.device("cpu"), seed=3)
    cut = HeadsCache(model, sampler, 1.0, "fp32", torch.device("cpu"), seed=3, seconds=0.0)
    assert full.tiles == 16 > cut.tiles == HeadsCache.MIN_TILES  # twice the set's pixels in 64 x 64 crops
    assert all(torch.equal(a, b) for a, b in zip(full.mu, again.mu))
    assert all(torch.equal(a, b) for a, b in zip(full.mu, cut.mu))  # the same first crops
    y, mu, f = cut.sample(5, seeded_generator(0))
    assert y.shape == mu.shape == (5, 1, 16, 16) and f.shape[0] == 5


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
    from dbsn.hub import save_weights
    from dbsn.train.init import init_weights

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


def test_init_carries_a_plain_backbone_into_a_pixel_shuffled_model_and_back(tmp_path):
    """A model trained on clean images (no pixel shuffle) starts one for camera photographs (pixel shuffle:
    the backbone wrapped as bsn.inner), with every weight, and the other way round; both then compute the
    same blind-spot outputs at stride 1."""
    from dbsn.nn import create_model
    from dbsn.hub import save_weights
    from dbsn.train.init import init_weights

    plain = create_model("dbsn_tiny", in_channels=3, noise_model="hg")
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    save_weights(tmp_path / "plain.safetensors", plain)
    shuffled = create_model("dbsn_tiny", in_channels=3, noise_model="hg", pd_stride=5)
    init_weights(shuffled, str(tmp_path / "plain.safetensors"))
    own = shuffled.state_dict()
    assert all(torch.equal(v, own[k.replace("bsn.", "bsn.inner.", 1) if k.startswith("bsn.") else k])
               for k, v in plain.state_dict().items())
    y = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(shuffled.eval().bsn(y, stride=1)[0], plain.eval().bsn(y)[0])
    save_weights(tmp_path / "shuffled.safetensors", shuffled)
    back = create_model("dbsn_tiny", in_channels=3, noise_model="hg")
    init_weights(back, str(tmp_path / "shuffled.safetensors"))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in plain.state_dict().items())


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


def _rows(path):
    """``log.csv`` as (header, steps of its rows), checking that every line is complete."""
    text = path.read_text()
    assert text.endswith("\n")
    header, *rows = text.splitlines()
    return header, [int(r.split(",", 1)[0]) for r in rows]


def test_a_killed_run_keeps_its_log_and_resumes_exactly(tmp_path):
    """SIGKILL mid-run: the log holds its header and every row so far; the resumed run ends bit-identical."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from dbsn.cli import main

    from .conftest import write_noisy_pngs

    noisy = tmp_path / "noisy"
    write_noisy_pngs(noisy)
    args = ["train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--noise-model", "awgn", "--steps", "80",
            "--patch-size", "16", "--batch-size", "2", "--val-every", "40", "--save-every", "7", "--device", "cpu"]
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "dbsn", "-q", *args, "-o", str(run)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    log_csv, deadline = run / "log.csv", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if (run / "checkpoint.pt").is_file() and log_csv.is_file() and log_csv.read_text().count("\n") > 10:
                break
            time.sleep(0.01)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()}"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    header, steps = _rows(log_csv)
    assert header.startswith("step,phase,loss,nll,gap,lr,elapsed_s")
    assert steps == list(range(1, len(steps) + 1)) and 10 <= len(steps) < 80  # each row flushed as it came

    torch.set_num_threads(1)  # as in the killed process: the same arithmetic
    assert main(["-q", *args[:1], "--resume", "-o", str(run)]) == 0
    assert _rows(log_csv) == (header, list(range(1, 81)))  # the header once, every step once, in order
    assert main(["-q", *args, "-o", str(tmp_path / "whole")]) == 0
    resumed = read_checkpoint(run / "checkpoint.pt")["model"]
    whole = read_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_the_log_keeps_one_header_and_the_rows_up_to_the_checkpoint(tmp_path):
    from dbsn.train.loop import _trim_log

    fields = ["step", "phase", "loss"]
    log_csv = tmp_path / "log.csv"
    cases = {
        "": "step,phase,loss\n",  # killed before its first row: the header alone
        "step,phase,loss\n1,mu,1\n2,mu,2\n3,mu,3\n": "step,phase,loss\n1,mu,1\n2,mu,2\n",
        "1,mu,1\n2,mu,2\n": "step,phase,loss\n1,mu,1\n2,mu,2\n",  # an old resume left no header
        "step,phase,loss\n1,mu,1\n2,mu": "step,phase,loss\n1,mu,1\n",  # a row cut short
        "step,loss,phase\n1,0.5,mu\n": "step,phase,loss\n1,mu,0.5\n",  # other columns: rewritten
    }
    for before, after in cases.items():
        log_csv.write_text(before)
        _trim_log(log_csv, 2, fields)
        assert log_csv.read_text() == after, before
    log_csv.unlink()
    _trim_log(log_csv, 0, fields)
    assert log_csv.read_text() == "step,phase,loss\n"


def test_a_run_removes_the_stale_temporaries_of_its_own_files(tmp_path):
    from dbsn.train.loop import prepare_run

    run = tmp_path / "run"
    run.mkdir()
    stale = [".checkpoint.pt.k2j4x.tmp.pt", ".model.safetensors.a1.tmp.safetensors", ".log.csv.zz.tmp.csv",
             ".run.json.q.tmp.json"]
    kept = ["notes.txt", ".other.csv.zz.tmp.csv", ".checkpoint.pt.backup"]
    for name in stale + kept:
        (run / name).write_text("x")
    assert prepare_run(str(run), resume=False) is None  # temporaries alone do not make a folder used
    assert sorted(p.name for p in run.iterdir()) == sorted(kept)


def test_images_too_small_are_skipped_and_a_folder_of_them_refused(tmp_path):
    from PIL import Image

    from dbsn.data import load_folder

    folder = _clean_folder(tmp_path / "some", n=1, size=40)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "dot.png")
    loaded = load_folder(folder, min_side=8)
    assert len(loaded) == 1 and [p.name for p, _ in loaded.skipped] == ["dot.png"]
    assert len(load_folder(folder)) == 2  # by default every readable image is kept
    summary = train(_options(clean=str(folder), noise="awgn:25", steps=1), str(tmp_path / "ok"), progress_bar=False)
    assert summary["images_train"] == 1 and any("dot.png" in s for s in summary["skipped"])
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny / "dot.png")
    with pytest.raises(ValueError, match=r"no image of at least 8 x 8 pixels .*1 x 1"):
        load_folder(tiny, min_side=8)
    with pytest.raises(ValueError, match=r"no image of at least 8 x 8 pixels .*1 x 1"):
        train(_options(clean=str(tiny), noise="awgn:25"), str(tmp_path / "t"), progress_bar=False)
    with pytest.raises(ValueError, match=r"largest image side .*\(40 pixels\); give --patch-size 80 or less"):
        train(_options(clean=str(folder), noise="awgn:25", patch_size=96), str(tmp_path / "r"), progress_bar=False)
    assert not (tmp_path / "r" / "log.csv").exists()


def test_out_of_memory_becomes_a_one_line_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from dbsn.train.stage1 import Stage1Task

    clean = _clean_folder(tmp_path / "clean")
    original, calls = Stage1Task.losses, []

    def losses(self, progress):
        calls.append(progress)
        if len(calls) == 5:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 123456789 bytes.")
        return original(self, progress)

    monkeypatch.setattr(Stage1Task, "losses", losses)
    with pytest.raises(ValueError, match="out of memory at step 5 .*smaller --batch-size or --patch-size.*step 4"):
        train(_options(clean=str(clean), noise="awgn:25", steps=10, save_every=2), str(tmp_path / "r"),
              progress_bar=False)
    assert read_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 4
    assert _rows(tmp_path / "r" / "log.csv")[1] == [1, 2, 3, 4]


def test_the_log_holds_the_loss_parts_and_the_loop_minimises_their_sum(tmp_path):
    import csv

    clean = _clean_folder(tmp_path / "clean")
    trace_weight = 0.25
    train(_options(clean=str(clean), noise="awgn:25", steps=6, phase_split=(0.5, 0.5, 0), trace_weight=trace_weight),
          str(tmp_path / "r"), progress_bar=False)
    rows = list(csv.DictReader((tmp_path / "r" / "log.csv").open()))
    mu_rows = [r for r in rows if r["phase"] == "mu"]
    heads_rows = [r for r in rows if r["phase"] == "heads"]
    assert mu_rows and heads_rows
    assert all(r["nll"] == "" and r["gap"] == "" for r in mu_rows)  # the L2 phase has no such parts
    for r in heads_rows:
        loss, nll, gap = float(r["loss"]), float(r["nll"]), float(r["gap"])
        assert gap >= 0 and loss == pytest.approx(nll + trace_weight * gap, rel=1e-4, abs=1e-5)


def test_out_of_memory_is_told_from_other_errors():
    from dbsn.runtime import is_out_of_memory as _out_of_memory

    assert _out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _out_of_memory(MemoryError())
    assert _out_of_memory(RuntimeError("CUDA out of memory"))
    assert not _out_of_memory(RuntimeError("expected scalar type Float but found Half"))
    assert not _out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("kw", [
    dict(val_every=0), dict(save_every=0), dict(save_every=-1), dict(steps=0), dict(steps=2.5),
    dict(steps=None, minutes=math.inf), dict(steps=None, minutes=math.nan), dict(steps=None, minutes=0),
    dict(patch_size=100000), dict(patch_size=4), dict(batch_size=0), dict(phase_split=(math.nan, 1, 1)),
    dict(phase_split=(math.inf, 1, 1)), dict(phase_split=(-1, 1, 1)), dict(lr=math.nan), dict(lr=-1e-3),
    dict(lr_heads=math.inf), dict(seed=-1), dict(ema=1.0), dict(ema=math.nan), dict(workers=-1),
    dict(cache_gb=math.inf), dict(cache_gb=math.nan), dict(heads_cache_gb=math.nan), dict(val_fraction=1.0),
    dict(trace_weight=math.nan), dict(val_patches=0), dict(channels=2),
])
def test_options_refuse_values_out_of_range(kw):
    with pytest.raises(ValueError) as err:
        _options(clean="x", noise="awgn:25", **kw).validate()
    assert "\n" not in str(err.value)


def test_mg_noise_on_gray_images_is_refused(tmp_path):
    gray = _clean_folder(tmp_path / "gray")
    with pytest.raises(ValueError, match="--noise mg needs colour images"):
        _options(clean="x", noise="mg", channels=1).validate()
    with pytest.raises(ValueError, match="--noise mg needs colour images.*are gray"):
        train(_options(clean=str(gray), noise="mg"), str(tmp_path / "a"), progress_bar=False)
    with pytest.raises(ValueError, match="--noise-model mg needs colour images.*are gray"):
        train(_options(noisy=str(gray), noise_model="mg"), str(tmp_path / "b"), progress_bar=False)


def test_a_run_killed_before_its_results_is_finished_by_resume(tmp_path):
    clean = _clean_folder(tmp_path / "clean")
    opts = _options(clean=str(clean), noise="awgn:25", steps=3)
    run = tmp_path / "r"
    train(opts, str(run), progress_bar=False)
    with pytest.raises(ValueError, match="is finished: 3 of 3 steps"):
        train(opts, str(run), resume=True, progress_bar=False)
    (run / "run.json").unlink()  # killed after the last checkpoint, before run.json
    summary = train(opts, str(run), resume=True, progress_bar=False)
    assert summary["steps"] == 3 and summary["last_validation"] and (run / "run.json").is_file()
    assert _rows(run / "log.csv")[1] == [1, 2, 3]



def test_fine_tuning_defaults_to_the_lower_learning_rates(tmp_path):
    """From trained weights (--init) the default learning rates are the lower pair of LEARNING_RATES; the run
    records the rates it used, and a rate given is kept."""
    from dbsn.train.stage1 import LEARNING_RATES

    assert LEARNING_RATES["init"][0] < LEARNING_RATES["scratch"][0]
    assert (TrainOptions().lr, TrainOptions().lr_heads) == LEARNING_RATES["scratch"]
    assert (TrainOptions(init="gray-stage1").lr, TrainOptions(init="gray-stage1").lr_heads) == LEARNING_RATES["init"]
    assert TrainOptions(init="gray-stage1", lr=5e-3).lr == 5e-3
    clean = _clean_folder(tmp_path / "clean")
    first = dict(clean=str(clean), noise="awgn:25", fixed_noise=True, steps=2)
    train(_options(**first), str(tmp_path / "a"), progress_bar=False)
    options = {k: v for k, v in vars(_options(**first)).items() if k not in ("lr", "lr_heads")}
    train(TrainOptions(**{**options, "init": str(tmp_path / "a" / "model.safetensors")}), str(tmp_path / "b"),
          progress_bar=False)
    stored = json.loads((tmp_path / "b" / "run.json").read_text())["options"]
    assert (stored["lr"], stored["lr_heads"]) == LEARNING_RATES["init"]
