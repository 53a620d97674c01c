import math

import numpy as np
import pytest
import torch

import dbsn
from dbsn.train import TrainOptions, load_model, save_weights, train
from dbsn.train.distill import DistillOptions, apply_factor, distill, noise_factor

from .test_train import _clean_folder


def test_synthetic_noise_has_the_estimated_covariance():
    # a known full covariance, drawn through its Cholesky factor, must come back within sampling error
    cov_n = torch.tensor([[4.0, 1.5, 0.5], [1.5, 3.0, 1.0], [0.5, 1.0, 2.0]]) * 1e-3
    factor = torch.linalg.cholesky(cov_n)[None, :, :, None, None]
    z = torch.randn((1, 3, 300, 300), generator=torch.Generator().manual_seed(0))
    n = apply_factor(factor, z)
    measured = torch.cov(n.reshape(3, -1))
    assert torch.allclose(measured, cov_n, atol=0.04 * cov_n.max().item())


def test_noise_factor_matches_the_teacher_estimate():
    torch.manual_seed(0)
    for noise_model, shape in (("mg", (3, 3, 1, 1)), ("awgn", (3, 1, 1)), ("hg", (3, 10, 12))):
        teacher = dbsn.create_model("dbsn_tiny", in_channels=3, noise_model=noise_model).eval()
        torch.nn.init.normal_(teacher.noise_estimator.net[-1].weight, std=0.3)
        x = torch.rand(3, 10, 12)
        factor = noise_factor(teacher, x)
        assert factor.shape == shape
        with torch.no_grad():
            s_n = teacher.average_noise(teacher.noise_estimator(x[None]))[0]
        if noise_model == "mg":
            cov = (factor[..., 0, 0] @ factor[..., 0, 0].T)
            assert torch.allclose(cov, s_n[..., 0, 0], atol=1e-5)
        else:
            assert torch.allclose(factor**2, s_n, atol=1e-6)


def test_distillation_smoke_raises_student_psnr(tmp_path):
    clean = _clean_folder(tmp_path / "clean", n=4, size=48)
    teacher_run = tmp_path / "teacher"
    train(TrainOptions(clean=str(clean), noise="awgn:25", fixed_noise=True, model="dbsn_tiny", steps=60,
                       batch_size=8, patch_size=32, lr=1e-3, val_fraction=0.0, val_every=1000),
          str(teacher_run), progress_bar=False)
    # a teacher whose noise estimator reads std 25, as a longer stage-1 run would
    teacher = load_model(teacher_run / "model.safetensors")
    last = teacher.noise_estimator.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 4.0 + math.log(math.expm1(25 / 255 - 1e-3)))
    save_weights(teacher_run / "model.safetensors", teacher)
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    from PIL import Image

    rng = np.random.default_rng(5)
    for p in sorted(clean.iterdir()):
        x = np.asarray(Image.open(p)) / 255.0
        Image.fromarray(np.round(np.clip(x + rng.normal(0, 25 / 255, x.shape), 0, 1) * 255).astype(np.uint8)).save(
            noisy / p.name)
    opts = DistillOptions(teacher=str(teacher_run / "model.safetensors"), noisy=str(noisy), clean=[str(clean)],
                          student="unet_small", student_kwargs={"widths": [16, 32, 64]}, steps=150, batch_size=8,
                          patch_size=32, val_every=50, lr=2e-3)
    first = distill(DistillOptions(**{**opts.__dict__, "steps": 1}), str(tmp_path / "s1"), progress_bar=False)
    last = distill(opts, str(tmp_path / "s"), progress_bar=False)
    before = first["last_validation"]["val_psnr_synthetic"]
    assert before < 22  # the synthetic noise has std 25: about 20 dB
    assert last["last_validation"]["val_psnr_synthetic"] > before + 3
    denoiser = dbsn.load(tmp_path / "s" / "model.safetensors")
    assert not denoiser.is_blind_spot
    result = dbsn.evaluate(denoiser, clean, "awgn:25")
    assert result["psnr_mu"] is None and result["psnr"] > result["psnr_noisy"]

    # --init: a student continues from trained weights (lr 0: they come back unchanged)
    distill(DistillOptions(**{**opts.__dict__, "steps": 1, "lr": 0.0, "init": str(tmp_path / "s" / "model.safetensors")}),
            str(tmp_path / "again"), progress_bar=False)
    a, b = load_model(tmp_path / "s" / "model.safetensors"), load_model(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="do not fit"):
        distill(DistillOptions(**{**opts.__dict__, "student_kwargs": {"widths": [8, 16, 32]},
                                  "init": str(tmp_path / "s" / "model.safetensors")}),
                str(tmp_path / "wrong"), progress_bar=False)


@pytest.mark.parametrize(
    "kw,match",
    [(dict(), "--teacher"), (dict(teacher="t"), "--noisy"), (dict(teacher="t", noisy="n", clean=["c"], steps=5,
                                                                   student="dbsn"), "student model")],
)
def test_distill_options_explain_mistakes(kw, match):
    with pytest.raises(ValueError, match=match):
        DistillOptions(**kw).validate()


def _noisy_folder(path, clean, std=25, seed=5):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(seed)
    for p in sorted(clean.iterdir()):
        x = np.asarray(Image.open(p)) / 255.0
        y = np.clip(x + rng.normal(0, std / 255, x.shape), 0, 1)
        Image.fromarray(np.round(y * 255).astype(np.uint8)).save(path / p.name)
    return path


@pytest.mark.parametrize("levels", ["clean", "noisy"])
def test_synthetic_levels_come_from_the_chosen_images(tmp_path, levels):
    from dbsn.data import read_image
    from dbsn.train.distill import DistillData

    clean = _clean_folder(tmp_path / "clean", n=3, size=40)
    noisy = _noisy_folder(tmp_path / "noisy", clean)
    torch.manual_seed(0)
    teacher = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn").eval()
    torch.nn.init.normal_(teacher.noise_estimator.net[-1].weight, std=1.0)
    torch.nn.init.constant_(teacher.noise_estimator.net[-1].bias, 4.0)  # where softplus is steep
    options = DistillOptions(teacher="t", noisy=str(noisy), clean=[str(clean)], steps=1, batch_size=8,
                             patch_size=32, synthetic_levels=levels)
    data = DistillData(options, teacher, torch.Generator().manual_seed(0))

    def levels_of(folder):
        return [noise_factor(teacher, torch.from_numpy(read_image(p)[0])) for p in sorted(folder.iterdir())]

    chosen, other = (noisy, clean) if levels == "noisy" else (clean, noisy)
    assert len(data.factors) == 3
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(data.factors, levels_of(chosen)))
    # CNN_est reads y, so the noisy and the clean images give different levels
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(data.factors, levels_of(other)))


def test_synthetic_levels_from_noisy_images_refuse_hg(tmp_path):
    from dbsn.train.distill import DistillData

    clean = _clean_folder(tmp_path / "clean", n=2, size=40)
    noisy = _noisy_folder(tmp_path / "noisy", clean)
    teacher = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="hg").eval()
    options = DistillOptions(teacher="t", noisy=str(noisy), clean=[str(clean)], steps=1, synthetic_levels="noisy")
    with pytest.raises(ValueError, match="HG"):
        DistillData(options, teacher, torch.Generator().manual_seed(0))


def test_zero_weight_on_the_noisy_pairs_makes_the_teacher_targets_irrelevant(tmp_path):
    # two teachers with the same noise estimator but different D-BSNs: their x_hat targets differ,
    # their synthetic noise does not, so with --weight-noisy 0 the students must come out identical
    clean = _clean_folder(tmp_path / "clean", n=3, size=40)
    noisy = _noisy_folder(tmp_path / "noisy", clean)
    torch.manual_seed(0)
    teacher = dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn").eval()
    save_weights(tmp_path / "a.safetensors", teacher)
    with torch.no_grad():
        for p in teacher.bsn.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    save_weights(tmp_path / "b.safetensors", teacher)

    def student(name, weight_noisy):
        opts = DistillOptions(teacher=str(tmp_path / name), noisy=str(noisy), clean=[str(clean)],
                              student="unet_small", student_kwargs={"widths": [8, 16, 32]}, steps=3,
                              batch_size=8, patch_size=32, weight_noisy=weight_noisy, val_every=1000)
        out = tmp_path / f"{name}-{weight_noisy}"
        distill(opts, str(out), progress_bar=False)
        return list(load_model(out / "model.safetensors").state_dict().values())

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    assert same(student("a.safetensors", 0.0), student("b.safetensors", 0.0))
    assert not same(student("a.safetensors", 0.1), student("b.safetensors", 0.1))


def test_cli_distills_an_opponent_colour_student_from_a_gray_one(tmp_path):
    from dbsn.cli import main

    clean = _clean_folder(tmp_path / "clean", n=3, size=40, channels=3)
    noisy = _noisy_folder(tmp_path / "noisy", clean)
    torch.manual_seed(0)
    save_weights(tmp_path / "teacher.safetensors", dbsn.create_model("dbsn_tiny", in_channels=3, noise_model="awgn"))
    gray = dbsn.create_model("unet_small", in_channels=1, widths=[8, 16, 32]).eval()
    save_weights(tmp_path / "gray.safetensors", gray)
    out = tmp_path / "colour"
    code = main(["-q", "distill", "--teacher", str(tmp_path / "teacher.safetensors"), "--noisy", str(noisy),
                 "--clean", str(clean), "--student", "unet_small", "--widths", "8,16,32", "--colour", "opponent",
                 "--init", str(tmp_path / "gray.safetensors"), "--lr", "0", "--steps", "1", "--batch-size", "4",
                 "--patch-size", "32", "-o", str(out)])
    assert code == 0
    student = load_model(out / "model.safetensors")
    assert student.config["colour"] == "opponent" and student.config["in_channels"] == 3
    # lr 0: the weights are those of the gray student grown onto the opponent channels
    from dbsn.train.init import init_weights

    want = dbsn.create_model("unet_small", in_channels=3, widths=[8, 16, 32], colour="opponent")
    init_weights(want, str(tmp_path / "gray.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), student.state_dict().values()))


@pytest.mark.parametrize("kw", [
    dict(val_every=0), dict(save_every=-1), dict(steps=None, minutes=math.inf), dict(patch_size=100000),
    dict(batch_size=0), dict(lr=math.nan), dict(seed=-1), dict(noisy_share=math.nan),
    dict(weight_noisy=math.nan), dict(weight_clean=-1.0), dict(u_range=(math.nan, 1.0)),
    dict(u_range=(0.9, math.inf)), dict(cache_gb=math.inf), dict(workers=-1),
])
def test_distill_options_refuse_values_out_of_range(kw):
    base = dict(teacher="t", noisy="n", clean=["c"], steps=5)
    with pytest.raises(ValueError) as err:
        DistillOptions(**{**base, **kw}).validate()
    assert "\n" not in str(err.value)
    DistillOptions(**base).validate()


def _tiny_student(tmp_path, **kw):
    clean = _clean_folder(tmp_path / "clean", n=3, size=40)
    noisy = _noisy_folder(tmp_path / "noisy", clean)
    torch.manual_seed(0)
    save_weights(tmp_path / "teacher.safetensors", dbsn.create_model("dbsn_tiny", in_channels=1, noise_model="awgn"))
    return DistillOptions(teacher=str(tmp_path / "teacher.safetensors"), noisy=str(noisy), clean=[str(clean)],
                          student="unet_small", student_kwargs={"widths": [8, 16, 32]}, steps=4, batch_size=4,
                          patch_size=32, val_every=1000, **kw)


def test_snapshots_keep_the_weights_along_the_run(tmp_path):
    from safetensors import safe_open

    # an interval far below one step's time: every step is past the next snapshot, and one file each
    opts = _tiny_student(tmp_path, snapshot_minutes=1e-9)
    out = tmp_path / "run"
    distill(opts, str(out), progress_bar=False)
    files = sorted((out / "snapshots").iterdir())
    assert [f.name for f in files] == [f"step-{s:08d}.safetensors" for s in range(1, 5)]
    seconds = []
    for f in files:
        with safe_open(str(f), "pt") as fh:
            seconds.append(float(fh.metadata()["elapsed_s"]))
    assert seconds == sorted(seconds) and seconds[0] > 0
    last, final = load_model(files[-1]), load_model(out / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), final.state_dict().values()))
    # the first snapshot is an earlier state, not a copy of the last
    assert not all(torch.equal(a, b) for a, b in zip(load_model(files[0]).state_dict().values(),
                                                     final.state_dict().values()))
    # a new run in that folder must not mix its snapshots with these: refused, or replaced with --overwrite
    (out / "model.safetensors").unlink()
    (out / "checkpoint.pt").unlink()
    (out / "log.csv").unlink()
    (out / "run.json").unlink()
    with pytest.raises(FileExistsError, match="snapshots"):
        distill(opts, str(out), progress_bar=False)
    distill(DistillOptions(**{**opts.__dict__, "steps": 2, "snapshot_minutes": None}), str(out), progress_bar=False,
            overwrite=True)
    assert not list((out / "snapshots").iterdir())


def test_l1_loss_trains_another_student(tmp_path):
    opts = _tiny_student(tmp_path)

    def weights(loss):
        distill(DistillOptions(**{**opts.__dict__, "loss": loss}), str(tmp_path / loss), progress_bar=False)
        return list(load_model(tmp_path / loss / "model.safetensors").state_dict().values())

    l2, l1 = weights("l2"), weights("l1")
    assert not all(torch.equal(a, b) for a, b in zip(l1, l2))
    with pytest.raises(ValueError, match="loss"):
        DistillOptions(**{**opts.__dict__, "loss": "huber"}).validate()
