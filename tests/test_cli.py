import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import dbsn
from dbsn.cli import main
from dbsn.hub import default_names


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


def _exit_code(argv) -> int:
    """``main``'s exit code, also where argparse refuses a value (it raises SystemExit)."""
    try:
        return main(argv)
    except SystemExit as err:
        return err.code


def _hashes(root):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_a_used_run_folder_is_refused_unless_overwrite_and_a_finished_run_is_not_resumed(tmp_path, capsys):
    from .conftest import write_noisy_pngs

    noisy = tmp_path / "noisy"
    write_noisy_pngs(noisy)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,phase,loss\n1,mu,0.5\n")  # another run's log, alone
    (run / "notes.txt").write_text("mine")
    args = ["-q", "train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--noise-model", "awgn", "--steps", "3",
            "--patch-size", "16", "--batch-size", "2", "--device", "cpu", "-o", str(run)]
    assert _exit_code(args) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run (log.csv)" in err and "--overwrite" in err and "\n" not in err
    assert (run / "log.csv").read_text() == "step,phase,loss\n1,mu,0.5\n"
    assert _exit_code([*args, "--overwrite"]) == 0
    capsys.readouterr()
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,phase,loss,nll,gap,lr") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files were replaced

    before = _hashes(run)
    for resume in (["--resume"], ["--resume", "--steps", "3"], ["--resume", "--steps", "2"]):
        assert _exit_code(["-q", "train", *resume, "-o", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"run {run} is finished: 3 of" in err and "give a larger --steps or --minutes" in err
        assert "\n" not in err
        assert _hashes(run) == before  # nothing changed, run.json's last validation included
    assert _exit_code(["-q", "train", "--resume", "--overwrite", "-o", str(run)]) == 2
    assert _exit_code(["-q", "distill", "--resume", "-o", str(run)]) == 2  # a stage-1 run: not distill's
    assert "does not take" in capsys.readouterr().err
    assert _hashes(run) == before


@pytest.mark.parametrize("command", ["train", "distill"])
@pytest.mark.parametrize("option,value,message", [
    ("--val-every", "0", "--val-every: expected an integer at least 1"),
    ("--save-every", "0", "--save-every: expected an integer at least 1"),
    ("--save-every", "-1", "--save-every: expected an integer at least 1"),
    ("--steps", "0", "--steps: expected an integer at least 1"),
    ("--minutes", "inf", "--minutes: expected a finite number"),
    ("--minutes", "nan", "--minutes: expected a finite number"),
    ("--patch-size", "100000", "--patch-size: expected a patch size at least 8 and at most 1024"),
    ("--patch-size", "4", "--patch-size: expected a patch size at least 8"),
    ("--batch-size", "0", "--batch-size: expected an integer at least 1"),
    ("--lr", "nan", "--lr: expected a finite number"),
    ("--ema", "1", "--ema: expected a number at least 0 and below 1"),
    ("--workers", "-1", "--workers: expected an integer at least 0"),
    ("--cache-gb", "inf", "--cache-gb: expected a finite number"),
    ("--seed", "-1", "--seed: expected an integer at least 0"),
])
def test_training_options_out_of_range_exit_2(tmp_path, capsys, command, option, value, message):
    base = {"train": ["train", "--noisy", str(tmp_path), "--steps", "1"],
            "distill": ["distill", "--teacher", "t", "--noisy", str(tmp_path), "--clean", str(tmp_path)]}[command]
    if option in ("--steps", "--minutes"):
        base = [a for a in base if a not in ("--steps", "1")]
    assert _exit_code(["-q", *base, option, value, "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]  # argparse: the usage, then one line that says what is wrong
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,message", [
    (["train", "--phase-split", "nan,1,1"], "--phase-split takes 3 comma-separated finite numbers"),
    (["train", "--phase-split", "1,inf,1"], "--phase-split takes 3 comma-separated finite numbers"),
    (["train", "--trace-weight", "2"], "--trace-weight: expected a number at least 0 and at most 1"),
    (["train", "--val-fraction", "1"], "--val-fraction: expected a number at least 0 and below 1"),
    (["train", "--heads-cache-gb", "-1"], "--heads-cache-gb: expected a number at least 0"),
    (["train", "--lr-heads", "-0.1"], "--lr-heads: expected a number at least 0"),
    (["train", "--width", "0"], "--width: expected an integer at least 1"),
    (["train", "--blocks", "-2"], "--blocks: expected an integer at least 1"),
    (["distill", "--u-range", "nan,1"], "--u-range takes 2 comma-separated finite numbers"),
    (["distill", "--widths", "8,0,16"], "--widths takes whole numbers of at least 1"),
    (["distill", "--widths", "8,inf"], "--widths takes some comma-separated finite numbers"),
    (["distill", "--noisy-share", "1.5"], "--noisy-share: expected a number at least 0 and at most 1"),
    (["distill", "--weight-clean", "-1"], "--weight-clean: expected a number at least 0"),
    (["distill", "--depth", "0"], "--depth: expected an integer at least 1"),
])
def test_more_training_options_out_of_range_exit_2(tmp_path, capsys, args, message):
    data = (["--noisy", str(tmp_path)] if args[0] == "train"
            else ["--teacher", "t", "--noisy", str(tmp_path), "--clean", str(tmp_path)])
    assert _exit_code(["-q", *args, *data, "--steps", "1", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "r").exists()


def test_training_data_that_cannot_give_patches_exits_2(tmp_path, capsys):
    from .conftest import write_noisy_pngs

    tiny, gray = tmp_path / "tiny", tmp_path / "gray"
    tiny.mkdir()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny / "dot.png")
    write_noisy_pngs(gray, n=2)
    cases = [
        (["--clean", str(tiny), "--noise", "awgn:25"], "no image of at least 8 x 8 pixels"),
        (["--clean", str(gray), "--noise", "mg"], "--noise mg needs colour images"),
        (["--noisy", str(gray), "--noise-model", "mg"], "--noise-model mg needs colour images"),
        (["--noisy", str(gray), "--patch-size", "96"], "(40 pixels); give --patch-size 80 or less"),
    ]
    for data, message in cases:
        assert main(["-q", "train", *data, "--steps", "1", "-o", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("dbsn train: error:"), err
        assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
