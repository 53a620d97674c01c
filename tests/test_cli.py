import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import dbsn
from dbsn.cli import main
from dbsn.pretrained import default_names


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained by `dbsn train --noisy` on a temporary folder (shared by the tests below)."""
    from .conftest import write_noisy_pngs

    root = tmp_path_factory.mktemp("cli")
    noisy = root / "noisy"
    write_noisy_pngs(noisy)
    (noisy / "corrupt.png").write_bytes(b"\x89PNG broken")
    run = root / "run"
    code = main(["-q", "train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--noise-model", "awgn",
                 "--steps", "8", "--patch-size", "32", "--batch-size", "4", "--val-every", "4", "-o", str(run)])
    assert code == 0
    return root, noisy, run


def test_train_writes_run_folder(trained):
    _, _, run = trained
    for name in ("checkpoint.pt", "model.safetensors", "log.csv", "run.json"):
        assert (run / name).is_file()
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == 8 and any("corrupt.png" in s for s in summary["skipped"])
    log_bytes = (run / "log.csv").read_bytes()
    assert b"\r" not in log_bytes and log_bytes.count(b"\n") == 1 + 8  # plain lines: header and one per step
    assert main(["-q", "train", "--noisy", str(trained[1]), "--steps", "2", "-o", str(run)]) == 2  # exists


def test_resume_continues(trained):
    _, _, run = trained
    assert main(["-q", "train", "--resume", "--steps", "10", "-o", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 10


def test_evaluate_json(trained, tmp_path, capsys):
    root, _, run = trained
    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(2):
        Image.fromarray(np.full((33, 35), 60 + 50 * i, np.uint8)).save(clean / f"c{i}.png")
    out = tmp_path / "r.json"
    code = main(["-q", "evaluate", "--model", str(run / "model.safetensors"), "--clean", str(clean),
                 "--noise", "awgn:25", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "c0.png" in table and "mean" in table
    result = json.loads(out.read_text())
    for key in ("images", "psnr_noisy", "psnr_mu", "psnr", "ssim", "noise_std_est"):
        assert key in result
    assert len(result["images"]) == 2 and 19 < result["psnr_noisy"] < 21.5


def test_denoise_skips_bad_files_keeps_bit_depth_and_never_overwrites(trained, tmp_path, capsys):
    _, noisy, run = trained
    a16 = (np.random.default_rng(0).random((21, 23)) * 65535).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    tifffile.imwrite(tmp_path / "deep.tif", a16)
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in noisy.iterdir()}
    code = main(["-q", "denoise", "--model", str(run / "checkpoint.pt"), str(noisy), str(tmp_path / "deep.png"),
                 str(tmp_path / "deep.tif"), "--noise-map", "-o", str(out)])
    assert code == 1  # corrupt.png failed; the others were written
    assert "corrupt.png" in capsys.readouterr().err
    assert (out / "n0.png").is_file() and (out / "n0_std_n.tiff").is_file()
    # two inputs of one stem get distinct names, told apart by their extensions
    assert np.asarray(Image.open(out / "deep_png.png")).dtype in (np.uint16, np.int32)
    assert np.asarray(Image.open(out / "n0.png")).dtype == np.uint8
    assert tifffile.imread(out / "deep_tif.tif").dtype == np.uint16
    assert (out / "deep_png_std_n.tiff").is_file() and (out / "deep_tif_std_n.tiff").is_file()
    std = tifffile.imread(out / "n0_std_n.tiff")
    _, expected = dbsn.load(run / "checkpoint.pt").denoise(np.asarray(Image.open(noisy / "n0.png")), return_std_n=True)
    assert std.shape == (40, 40) and np.allclose(std, expected, rtol=1e-5)  # 0-255 units, not clipped to 1
    # writing into the input folder would overwrite the inputs: refused before any work, inputs intact
    assert main(["-q", "denoise", "--model", str(run / "model.safetensors"), str(noisy), "-o", str(noisy)]) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in noisy.iterdir()} == before


def test_python_api(trained):
    _, noisy, run = trained
    denoiser = dbsn.load(run / "model.safetensors")
    image = np.asarray(Image.open(noisy / "n0.png"))
    out = denoiser.denoise(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    out, std_n = denoiser.denoise(image.astype(np.float32) / 255, return_std_n=True)
    assert out.dtype == np.float32 and std_n.shape == image.shape
    with pytest.raises(ValueError, match="colour but the model is gray"):
        denoiser.denoise(np.random.rand(8, 8, 3))


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["-q", "train", "--clean", str(tmp_path), "--steps", "1", "-o", str(tmp_path / "r")]) == 2
    assert "--noise" in capsys.readouterr().err
    assert main(["-q", "evaluate", "--model", str(tmp_path / "none.pt"), "--clean", str(tmp_path),
                 "--noise", "awgn:25"]) == 2
    assert main(["-q", "train", "--noisy", str(tmp_path / "missing"), "--steps", "1", "-o", str(tmp_path / "r")]) == 2


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "blind-spot width=96 blocks=8" in out and "unet_small" in out


def test_demo_denoises_with_the_bundled_defaults(tmp_path, capsys):
    assert main(["-q", "demo", "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "demo" / "denoised").glob("*.png"))
    expected = {"1": ["gray_castle.png", "gray_coyote.png"], "3": ["color_penguin.png", "color_tiger.png"]}
    defaults = default_names()
    assert written == sorted(name for c in defaults for name in expected[c])
    modes = {"1": "L", "3": "RGB"}
    for c in defaults:  # a gray model writes gray, a colour model colour
        assert Image.open(tmp_path / "demo" / "denoised" / expected[c][0]).mode == modes[c]
    if len(defaults) < 2:
        assert "skipped" in out
    noisy, denoised = (float(v) for v in next(line for line in out.splitlines() if line.startswith("mean")).split()[1:])
    assert denoised > noisy + 6  # std 25 noise: about 20.5 dB before
    assert (tmp_path / "demo" / "before_after.png").is_file()


def test_demo_without_bundled_models_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DBSN_WEIGHTS", str(tmp_path))
    assert main(["-q", "demo", "-o", str(tmp_path / "demo")]) == 2
    assert "no bundled default model" in capsys.readouterr().err


def test_add_noise_is_reproducible_unclipped_and_skips_bad_files(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    x = np.full((30, 31), 250, np.uint8)  # near white: unclipped noise goes above 1
    Image.fromarray(x).save(clean / "a.png")
    (clean / "broken.png").write_bytes(b"not a png")
    args = ["-q", "add-noise", str(clean), "--noise", "awgn:25", "--seed", "3"]
    assert main([*args, "-o", str(tmp_path / "n1")]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "n2")]) == 1
    y1, y2 = tifffile.imread(tmp_path / "n1" / "a.tiff"), tifffile.imread(tmp_path / "n2" / "a.tiff")
    assert y1.dtype == np.float32 and np.array_equal(y1, y2)
    assert y1.max() > 1.0
    assert abs(np.std(y1 - 250 / 255) * 255 - 25) < 2
    before = (tmp_path / "n1" / "a.tiff").read_bytes()
    assert main([*args[:2], str(tmp_path / "n1"), *args[3:], "-o", str(tmp_path / "n1")]) == 2  # onto its input
    assert (tmp_path / "n1" / "a.tiff").read_bytes() == before
