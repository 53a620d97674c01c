"""Correlated real noise: pixel-shuffle blind spots, random-replacing refinement, the noise diagnosis
and what `dbsn train --noisy` and `dbsn inspect` do with it."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dbsn
from dbsn.cli import main
from dbsn.denoiser import Denoiser
from dbsn.nn.shuffle import pd_down, pd_up
from dbsn.noise.diagnosis import Diagnosis, describe, diagnose, recommend

from .conftest import smooth_image


def test_pixel_shuffle_round_trip_and_sub_images():
    x = torch.arange(2 * 3 * 6 * 9, dtype=torch.float32).reshape(2, 3, 6, 9)
    down = pd_down(x, 3)
    assert down.shape == (18, 3, 2, 3)
    assert torch.equal(pd_up(down, 3), x)
    # sub-image (i, j) of image b holds pixels (i + 3r, j + 3c)
    b, i, j = 1, 2, 1
    assert torch.equal(down[(b * 3 + i) * 3 + j], x[b, :, i::3, j::3])


@pytest.mark.parametrize("name,kwargs", [
    ("dbsn_tiny", {"noise_model": "hg"}),
    ("bsn_unet", {"noise_model": "awgn", "width": 8, "blocks": 2}),
])
@pytest.mark.parametrize("train_mode,stride", [(True, 3), (False, 2), (False, 1)])
def test_shuffled_output_reads_only_its_own_sub_image_and_never_itself(name, kwargs, train_mode, stride):
    """With stride s, mu and var_mu at p depend on pixels q = p + s * k, k != 0, and on no other: the
    blind spot is exact and the neighbours closer than s (which share correlated noise) are unseen."""
    torch.manual_seed(0)
    model = dbsn.create_model(name, in_channels=3, pd_stride=3, **kwargs).double().train(train_mode)
    size, p = 17, (8, 7)  # odd sizes: the padding to a multiple of the stride is exercised
    y = torch.rand(1, 3, size, size - 2, dtype=torch.float64, requires_grad=True)
    out = model.pixel_parts(y, stride=None if stride != 1 else 1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size - 2), indexing="ij")
    same = ((yy - p[0]) % stride == 0) & ((xx - p[1]) % stride == 0)
    for key in ("mu", "s_mu"):
        for c in range(3):
            (g,) = torch.autograd.grad(out[key][0, c, p[0], p[1]], y, retain_graph=True)
            reach = g[0].abs().sum(0)
            assert reach[p] == 0, f"{key} at p reads y at p"
            assert reach[~same].abs().sum() == 0, f"{key} reads pixels outside its sub-image at stride {stride}"
            assert reach[same].sum() > 0


def test_refinement_is_deterministic_and_changes_the_output():
    torch.manual_seed(0)
    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn", pd_stride=4)
    y = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    refined = Denoiser(model, device="cpu", precision="fp32", refine=8).predict(y)["x_hat"]
    again = Denoiser(model, device="cpu", precision="fp32", refine=8).predict(y)["x_hat"]
    plain = Denoiser(model, device="cpu", precision="fp32").predict(y)["x_hat"]
    assert torch.equal(refined, again)
    assert not torch.allclose(refined, plain)
    with pytest.raises(ValueError, match="pixel-shuffled"):
        Denoiser(dbsn.create_model("dbsn_tiny", in_channels=1), device="cpu", refine=2)


@pytest.mark.parametrize("window", [None, 17])
def test_variances_measured_on_the_image_give_the_best_weight_of_mu_and_y(window):
    """Noise of variance 4e-3 and an estimate ``mu`` with independent errors of variance 1e-3: given the
    noise level, the fusion finds ``var_mu`` from ``y - mu`` and reaches the least squared error, 8e-4
    (below both ``y`` and ``mu``), over the whole image or window by window."""
    from dbsn.fusion import bayes_fusion, measured_variances

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 256, 256, generator=g)
    y = x + 0.004**0.5 * torch.randn(x.shape, generator=g)
    mu = x + 0.001**0.5 * torch.randn(x.shape, generator=g)
    s_mu, s_n = measured_variances(y, mu, torch.full((2, 3), 0.004), window)
    assert s_mu.shape == ((2, 3, 1, 1) if window is None else (2, 3, 256, 256)) and s_n.shape == (2, 3, 1, 1)
    torch.testing.assert_close(s_mu.median(), torch.tensor(0.001), rtol=0.1, atol=0)
    mse = float(((bayes_fusion(y, mu, s_mu, s_n) - x) ** 2).mean())
    assert mse == pytest.approx(0.001 * 0.004 / 0.005, rel=0.05)
    # where the noise alone explains the residual, the estimate is mu
    s_mu, s_n = measured_variances(y, mu, torch.full((2, 3), 0.01), window)
    assert float(s_mu.abs().max()) == 0
    torch.testing.assert_close(bayes_fusion(y, mu, s_mu, s_n), mu)


def test_variances_measured_around_each_pixel_follow_where_mu_misses():
    """``mu`` misses by variance 1e-2 on the left half (texture) and 1e-4 on the right (flat), noise 4e-3:
    one weight for the whole image serves neither half; measured window by window, the fusion comes within
    5 % of the best weight for each half, and a per-pixel noise variance is taken as given."""
    from dbsn.fusion import FUSION_WINDOW, bayes_fusion, measured_variances

    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 256, 256, generator=g)
    miss = torch.full_like(x, 1e-4)
    miss[..., :128] = 1e-2
    y = x + 0.004**0.5 * torch.randn(x.shape, generator=g)
    mu = x + miss.sqrt() * torch.randn(x.shape, generator=g)
    best = float((miss * 0.004 / (miss + 0.004)).mean())
    mse = {}
    for window in (None, FUSION_WINDOW):
        mse[window] = float(((bayes_fusion(y, mu, *measured_variances(y, mu, torch.full((1, 1), 0.004), window))
                              - x) ** 2).mean())
    assert mse[FUSION_WINDOW] == pytest.approx(best, rel=0.05)
    assert mse[None] > 1.15 * mse[FUSION_WINDOW]
    per_pixel = torch.full_like(x, 0.004)
    torch.testing.assert_close(measured_variances(y, mu, per_pixel, FUSION_WINDOW)[0],
                               measured_variances(y, mu, torch.full((1, 1), 0.004), FUSION_WINDOW)[0])
    with pytest.raises(ValueError, match="odd"):
        measured_variances(y, mu, per_pixel, 16)


@pytest.mark.parametrize("fusion", ["local", "image", "heads"])
def test_a_stage1_denoiser_fuses_as_asked_and_reports_the_variances_it_used(fusion):
    """The measured fusions replace the heads' variances (and report those they used); ``heads`` keeps the
    model's own; the same image gives the same result twice."""
    from dbsn.fusion import bayes_fusion

    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn").eval()
    ramp = torch.linspace(0.2, 0.8, 128).expand(1, 1, 128, 128)
    y = ramp + 10 / 255 * torch.randn(ramp.shape, generator=torch.Generator().manual_seed(0))
    denoiser = Denoiser(model, device="cpu", precision="fp32", fusion=fusion)
    out = denoiser.predict(y)
    assert torch.equal(out["x_hat"], denoiser.predict(y)["x_hat"])
    torch.testing.assert_close(out["x_hat"], bayes_fusion(y, out["mu"], out["var_mu"], out["var_n"]).clamp(0, 1))
    with torch.no_grad():
        own = model(y)
    assert torch.equal(out["var_n"], own["var_n"]) == (fusion == "heads")
    if fusion != "heads":  # the level read from the image
        assert 255 * float(out["var_n"].mean().sqrt()) == pytest.approx(10, rel=0.15)
    assert out["var_mu"].shape[-1] == (1 if fusion == "image" else 128)
    with pytest.raises(ValueError, match="fusion"):
        Denoiser(model, device="cpu", fusion="mean")


def test_a_pixel_shuffled_model_reads_the_noise_where_mu_explains_the_texture():
    """On a finely textured image every block of ``y`` holds texture, and the level read from it is far
    above the noise; read from ``y - mu``, where ``mu`` keeps the texture, it is the noise's."""
    model = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn", pd_stride=2).eval()
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:128, 0:128]
    x = (0.5 + 0.15 * np.sin(r * 1.3) * np.cos(c * 0.9)).astype(np.float32)[None, None]
    y = torch.from_numpy(x + rng.normal(0, 5 / 255, x.shape).astype(np.float32))
    denoiser = Denoiser(model, device="cpu", precision="fp32", fusion="image")
    var_level = denoiser._noise_variance(y)
    assert float(var_level.sqrt()) > 10 / 255  # texture read as noise
    with torch.no_grad():
        var_n_heads = model(y)["var_n"]
        measured = denoiser._fuse(y, torch.from_numpy(x), var_n_heads, var_level)  # mu: the texture itself
    assert 255 * float(measured["var_n"].sqrt()) == pytest.approx(5, rel=0.1)
    assert 255 * float(measured["var_mu"].sqrt()) < 1.5


def test_noise_level_reads_white_noise_and_declines_small_images():
    from dbsn.noise.diagnosis import noise_level

    rng = np.random.default_rng(0)
    ramp = np.linspace(0.2, 0.8, 256, dtype=np.float32)[None, None, :].repeat(256, 1)
    noisy = ramp + rng.normal(0, 10 / 255, ramp.shape).astype(np.float32)
    assert noise_level(noisy) * 255 == pytest.approx(10, rel=0.1)
    assert noise_level(noisy[:, :40, :40]) is None


def test_noise_level_of_a_colour_image_is_the_mean_over_its_channels_not_the_quietest_one():
    """A camera's colour channels carry noise of different levels (white balance gains): the level the
    fusion compares with the model's mean noise variance is the channels' mean variance. Pooling the
    channels' flattest blocks read the quietest channel, about 6 here, for a mean of 12."""
    from dbsn.noise.diagnosis import noise_level

    rng = np.random.default_rng(0)
    stds = np.array([13.0, 6.0, 15.0])
    ramp = np.linspace(0.2, 0.8, 256, dtype=np.float32)[None, None, :].repeat(256, 1).repeat(3, 0)
    noisy = ramp + (stds[:, None, None] / 255 * rng.standard_normal(ramp.shape)).astype(np.float32)
    assert noise_level(noisy) * 255 == pytest.approx(np.sqrt((stds**2).mean()), rel=0.06)
    d = diagnose([noisy])
    assert d.channel_std == pytest.approx(stds, rel=0.06)
    assert d.std < 8  # the pooled level, which the fusion no longer reads
    assert "per channel: std" in describe(d)


def test_a_pixel_shuffled_model_fuses_at_the_noise_level_read_from_the_image():
    """An untrained model's noise estimate is far from the truth; the measured fusion takes the level read
    from the image, and the heads' fusion of a plain model keeps its own (a pixel-shuffled one measures
    even then)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = np.linspace(0.3, 0.7, 128, dtype=np.float32)[None, None, None, :].repeat(128, axis=2)
    y = torch.from_numpy(x + rng.normal(0, 2 / 255, x.shape).astype(np.float32))
    shuffled = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn", pd_stride=2)
    plain = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn")
    for model in (shuffled, plain):
        with torch.no_grad():
            own = model.eval()(y)
        assert float(own["var_n"].mean()) ** 0.5 > 4 / 255  # the untrained estimate: twice the noise
        out = Denoiser(model, device="cpu", precision="fp32").predict(y)
        assert 1.6 / 255 < float(out["var_n"].mean()) ** 0.5 < 2.4 / 255
        assert (out["x_hat"] - y).abs().mean() < (own["x_hat"].clamp(0, 1) - y).abs().mean()
        out = Denoiser(model, device="cpu", precision="fp32", fusion="heads").predict(y)
        if model is shuffled:
            assert 1.6 / 255 < float(out["var_n"].mean()) ** 0.5 < 2.4 / 255
        else:
            # the same fusion; the Denoiser's channels-last layout moves the last float digits only
            torch.testing.assert_close(out["var_n"], own["var_n"], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out["x_hat"], own["x_hat"].clamp(0, 1), rtol=1e-4, atol=1e-4)


def _noisy(rng, n=6, size=96, channels=1, noise="awgn", blur=False):
    images = []
    for _ in range(n):
        x = smooth_image(rng, size, channels)
        z = rng.standard_normal(x.shape)
        if blur:  # a 2 x 2 box: neighbours share half their noise (correlation 0.5 at lag 1, 0 from lag 2)
            z = F.avg_pool2d(torch.from_numpy(np.pad(z, ((0, 0), (0, 1), (0, 1)), mode="wrap"))[None], 2,
                             stride=1)[0].numpy() * 2
        std = 20 / 255 if noise == "awgn" else np.sqrt((40 * x / 255) ** 2 + (5 / 255) ** 2)
        images.append((x + std * z).astype(np.float32))
    return images


def test_diagnosis_finds_white_noise_independent_and_its_level():
    d = diagnose(_noisy(np.random.default_rng(0)))
    assert d.correlation_length == 1 and not d.correlated
    assert abs(d.rho1) < 0.05
    assert abs(d.std - 20) < 2
    assert not d.signal_dependent
    r = recommend(d)
    assert (r.noise_model, r.pd_stride, r.pd_stride_infer) == ("awgn", 1, 1)


def test_diagnosis_finds_signal_dependent_noise():
    d = diagnose(_noisy(np.random.default_rng(1), channels=3, noise="hg"))
    assert d.signal_dependent and d.signal_ratio > 2 and not d.correlated
    assert recommend(d).noise_model == "hg"


def test_signal_ratio_stays_within_the_levels_measured_when_the_fit_reaches_zero():
    # pure photon noise: the fitted variance a x + b is 0 at the darkest bin
    x = [0.0, 0.25, 1.0]
    a, b = 0.01, 0.0
    measured = [max(255 * (a * t + b) ** 0.5, 2.0) for t in x]  # the darkest bin still shows some noise
    d = Diagnosis(images=1, blocks=10, rho=[[1, 0], [0, 0]], correlation_length=1, std=10.0,
                  bin_intensity=x, bin_std=measured, fit=(a, b))
    assert d.signal_dependent
    assert d.signal_ratio == pytest.approx(measured[-1] / measured[0], rel=1e-6)


def test_diagnosis_finds_correlated_noise_and_asks_for_pixel_shuffle():
    d = diagnose(_noisy(np.random.default_rng(2), blur=True))
    assert abs(d.rho1 - 0.5) < 0.06
    assert abs(d.rho[0][2]) < 0.05
    assert d.correlation_length == 2 and d.correlated
    r = recommend(d)
    assert (r.pd_stride, r.pd_stride_infer) == (5, 2)
    assert "pixel-shuffle" in r.reasons[1]


def _write(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, y in enumerate(images):
        plane = y[0] if len(y) == 1 else np.moveaxis(y, 0, -1)
        Image.fromarray(np.round(np.clip(plane, 0, 1) * 255).astype(np.uint8)).save(folder / f"im{i}.png")


def test_train_on_correlated_noise_chooses_pixel_shuffle_and_says_why(tmp_path, caplog):
    noisy, run = tmp_path / "noisy", tmp_path / "run"
    _write(noisy, _noisy(np.random.default_rng(3), n=4, size=64, blur=True))
    caplog.set_level("INFO", logger="dbsn")
    assert main(["-q", "train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--steps", "3", "--batch-size", "2",
                 "--patch-size", "40", "--precision", "fp32", "-o", str(run)]) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["model"]["pd_stride"] == 5 and summary["model"]["pd_stride_infer"] == 2
    assert summary["model"]["noise_model"] == "awgn"
    assert summary["noise_diagnosis"]["correlation_length"] == 2
    assert "pixel-shuffle stride 5" in caplog.text
    denoiser = dbsn.load(str(run / "model.safetensors"), device="cpu")
    assert denoiser.refine == 0 and denoiser.model.shuffled
    # the quality report: what the trained model took out of held-out noisy images, and a figure of it
    from PIL import Image

    report = json.loads((run / "report.json").read_text())
    assert report["summary"] == summary["quality_report"] and report["summary"]["images"] == len(report["images"]) >= 1
    assert report["summary"]["val_nll"] == summary["last_validation"]["val_nll"]
    for row in report["images"]:
        assert row["image"].endswith(".png") and row["residual_std"] > 0 and row["noise_std_est"] > 0
        assert set(row["residual_rho"]) >= {"0,1", "1,0"} and -1 <= row["structure"] <= 1
    with Image.open(run / "report.png") as figure:
        assert figure.format == "PNG" and figure.width > 4 * 64
    # the user's own choice wins over the diagnosis
    assert main(["-q", "train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--steps", "2", "--batch-size", "2",
                 "--patch-size", "40", "--precision", "fp32", "--pd-stride", "1", "--noise-model", "hg",
                 "-o", str(tmp_path / "mine")]) == 0
    mine = json.loads((tmp_path / "mine" / "run.json").read_text())
    assert mine["model"]["pd_stride"] == 1 and mine["model"]["noise_model"] == "hg"
    assert "noise_diagnosis" not in mine


def test_inspect_prints_verdicts_writes_figure_and_json_and_skips_a_bad_file(tmp_path, capsys):
    from PIL import Image

    noisy = tmp_path / "noisy"
    _write(noisy, _noisy(np.random.default_rng(4), n=3, size=128))
    (noisy / "broken.png").write_bytes(b"not an image")
    figure, report = tmp_path / "noise.png", tmp_path / "noise.json"
    code = main(["-q", "inspect", str(noisy), "--figure", str(figure), "--json", str(report)])
    out = capsys.readouterr()
    assert code == 1  # one file could not be read: reported, the rest diagnosed
    assert "broken.png" in out.err
    assert "independent noise" in out.out and "--pd-stride 1" in out.out
    verdict = json.loads(report.read_text())
    assert verdict["images"] == 3 and verdict["correlation_length"] == 1
    assert Image.open(figure).size[0] > 100
    # outputs that exist are not replaced without --overwrite
    assert main(["-q", "inspect", str(noisy), "--json", str(report)]) == 2


def _edges(size=96):
    """Sharp squares: structure that a blur removes along with the noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (0.2 + 0.6 * (((yy // 12) + (xx // 12)) % 2))[None].astype(np.float64)


def test_residual_report_tells_removed_noise_from_removed_detail():
    from dbsn.noise.diagnosis import residual_report

    rng = np.random.default_rng(5)
    x = _edges()
    y = x + rng.normal(0, 20 / 255, x.shape)
    perfect = residual_report(y, x)  # only the noise taken out
    assert abs(perfect["residual_std"] - 20) < 1
    assert abs(perfect["rho1"]) < 0.05
    assert perfect["structure"] < 0.1 and "detail kept" in perfect["verdict"]
    blurred = F.avg_pool2d(torch.from_numpy(y)[None], 5, stride=1, padding=2, count_include_pad=False)[0].numpy()
    lossy = residual_report(y, blurred)  # the edges taken out with the noise
    assert lossy["structure"] > 0.3 and "removed detail" in lossy["verdict"]


def test_denoise_report_without_clean_images(noisy_folder, tmp_path, capsys):
    noisy, _ = noisy_folder
    report = tmp_path / "report.json"
    assert main(["-q", "denoise", "--model", "gray", str(noisy), "-o", str(tmp_path / "out"),
                 "--report", str(report)]) == 0
    rows = json.loads(report.read_text())
    assert len(rows) == 6 and all(5 < r["residual_std"] < 40 for r in rows)
    assert "report im0.png: residual std" in capsys.readouterr().out
    # an existing report is not replaced, and nothing is denoised
    assert main(["-q", "denoise", "--model", "gray", str(noisy), "-o", str(tmp_path / "out2"),
                 "--report", str(report)]) == 2
    assert not (tmp_path / "out2").exists()


def test_denoise_suggests_what_to_use_on_correlated_noise_only(tmp_path, caplog):
    from dbsn.cli import main

    caplog.set_level("WARNING", logger="dbsn")
    for blur in (True, False):
        caplog.clear()
        inputs = tmp_path / f"in_{blur}"
        _write(inputs, _noisy(np.random.default_rng(4), n=2, size=96, blur=blur))
        assert main(["-q", "denoise", "--model", "gray", str(inputs), "-o", str(tmp_path / f"out_{blur}")]) == 0
        assert ("shared between neighbouring pixels" in caplog.text) == blur
        assert ("dbsn train --noisy DIR" in caplog.text) == blur
        assert ("--model gray-hg" in caplog.text) == blur


def test_denoise_suggests_the_bundled_model_for_real_photographs_on_correlated_colour_noise(tmp_path, caplog):
    """Colour photographs with noise shared between neighbours: the suggestion names the bundled model that
    learned real photographs' noise (a stage-1 model of 3 channels whose noise is "real noise"), where the
    package has one, and color-hg."""
    from dbsn.cli import main
    from dbsn.hub import bundled_models

    real = [name for name, e in bundled_models().items() if e.noise == "real noise" and e.channels == 3]
    caplog.set_level("WARNING", logger="dbsn")
    inputs = tmp_path / "in"
    _write(inputs, _noisy(np.random.default_rng(5), n=2, size=96, channels=3, blur=True))
    assert main(["-q", "denoise", "--model", "color", str(inputs), "-o", str(tmp_path / "out")]) == 0
    assert "shared between neighbouring pixels" in caplog.text
    assert f"--model {real[0] if real else 'color-hg'} " in caplog.text
    assert "--model color-hg " in caplog.text  # beside a model learned from real photographs: light noise
    caplog.clear()  # the model in use is not suggested again
    assert main(["-q", "denoise", "--model", "color-hg", str(inputs), "-o", str(tmp_path / "out_hg")]) == 0
    assert "shared between neighbouring pixels" in caplog.text and "--model color-hg " not in caplog.text
