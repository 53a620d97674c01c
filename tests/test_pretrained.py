"""Bundled models by name, the default model per channel count, `dbsn list`, and the figure."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dbsn
from dbsn.cli import main
from dbsn.hub import bundled_models, default_model, default_names, resolve_model
from dbsn.hub import save_weights

from .conftest import DATASETS


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A weights folder with a gray student + its stage-1 teacher, and a colour stage-1 model."""
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.manual_seed(0)
    save_weights(folder / "g1.safetensors", dbsn.create_model("dbsn_tiny", in_channels=1))
    save_weights(folder / "gs.safetensors", dbsn.create_model("unet_small", in_channels=1))
    save_weights(folder / "c1.safetensors", dbsn.create_model("dbsn_tiny", in_channels=3))
    index = {
        "default": {"1": "gray", "3": "color-stage1"},
        "models": {
            "gray": {"file": "gs.safetensors", "channels": 1, "stage": "student", "noise": "awgn:5-50",
                     "teacher": "gray-stage1"},
            "gray-stage1": {"file": "g1.safetensors", "channels": 1, "stage": "stage1", "noise": "awgn:5-50"},
            "color-stage1": {"file": "c1.safetensors", "channels": 3, "stage": "stage1", "noise": "awgn:5-50"},
            "gone": {"file": "missing.safetensors", "channels": 1, "stage": "stage1", "noise": "hg:40,10"},
        },
    }
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.setenv("DBSN_WEIGHTS", str(folder))
    return folder


def test_load_by_name_and_default(zoo):
    assert not dbsn.load("gray").is_blind_spot
    assert dbsn.load("gray-stage1").is_blind_spot
    assert default_model(1) == "gray" and default_model(1, blind_spot=True) == "gray-stage1"
    assert default_model(3) == "color-stage1"
    assert not bundled_models()["gone"].available
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_model("gone")
    with pytest.raises(ValueError, match="gray-stage1"):  # the message lists the names
        resolve_model("grey")
    with pytest.raises(FileNotFoundError):
        resolve_model("no/such/file.safetensors")


def test_no_bundled_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DBSN_WEIGHTS", str(tmp_path))  # no index.json at all
    with pytest.raises(LookupError, match="gray"):
        default_model(1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert main(["-q", "denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "no bundled models" in capsys.readouterr().out


def test_denoise_picks_default_per_channels(zoo, tmp_path, capsys):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 23), dtype=np.uint8)).save(inputs / "g.png")
    Image.fromarray(rng.integers(0, 255, (21, 19, 3), dtype=np.uint8)).save(inputs / "c.png")
    out = tmp_path / "out"
    assert main(["-q", "denoise", str(inputs), "-o", str(out)]) == 0
    assert np.asarray(Image.open(out / "g.png")).shape == (20, 23)
    assert np.asarray(Image.open(out / "c.png")).shape == (21, 19, 3)
    # a noise map needs the stage-1 model behind the gray default
    assert main(["-q", "denoise", str(inputs / "g.png"), "-o", str(tmp_path / "out2"), "--noise-map"]) == 0
    assert (tmp_path / "out2" / "g_std_n.tiff").is_file()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "gray-stage1" in listing and "missing" in listing and "(default)" in listing


def test_before_after_figure(tmp_path):
    from dbsn.figure import before_after

    gray = np.full((1, 10, 12), 0.5, np.float32)
    colour = np.zeros((3, 8, 8), np.float32)
    colour[0] = 1.0
    path = before_after([[gray, gray], [colour, colour]], ["noisy", "denoised"], tmp_path / "f.png",
                        captions=["a", "b", "c", "d"])
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] >= 2 * 12 and image.shape[0] >= 10 + 8
    assert (image[..., 0] == 255).any() and (image == 128).any()  # the red panel and the gray one
    with pytest.raises(ValueError):
        before_after([[gray]], ["noisy", "denoised"], tmp_path / "g.png")


def test_shipped_models_are_complete(monkeypatch):
    # the package's own weights folder: every listed model loads, matches its index entry and has a
    # card with the command that trained it; students name a listed teacher; within 50 MB in all
    from dbsn.hub import read_checkpoint

    monkeypatch.delenv("DBSN_WEIGHTS", raising=False)
    models = bundled_models()
    if not models:
        pytest.skip("no bundled weights in this installation")
    for name, entry in models.items():
        assert entry.available, name
        config = read_checkpoint(entry.file)["config"]
        assert config.get("in_channels", 1) == entry.channels, name
        if entry.stage == "stage1" and entry.noise == "real noise":  # learned from noisy images: heads of any kind
            assert config["noise_model"] in ("awgn", "hg", "mg"), name
        elif entry.stage == "stage1":
            assert config["noise_model"] == entry.noise.split(":")[0].removesuffix("-indep"), name
        else:
            assert models[entry.teacher].stage == "stage1" and models[entry.teacher].noise == entry.noise, name
        card = entry.card.read_text()
        assert "## How it was trained" in card and "dbsn -q " in card, name
    for channels, name in default_names().items():
        assert models[name].stage == "student" and models[name].channels == int(channels)
    assert sum(entry.file.stat().st_size for entry in models.values()) <= 50e6


def _shipped_names() -> list:
    """The package's own models, stage-1 ones marked slow (about 1 s per image on a 2-core CPU)."""
    models = bundled_models(Path(dbsn.__file__).parent / "weights")  # not DBSN_WEIGHTS: what ships
    return [pytest.param(name, marks=[pytest.mark.slow] if entry.stage == "stage1" else [])
            for name, entry in models.items()]


# the storage check each card records: "fp16 safetensors. On the first 8 bsd68 images at `awgn:25`: ...",
# the stored PSNR second ("fp16 safetensors, except ...: int8 ..." for weights partly in int8)
CARD_CHECK = re.compile(r"^(fp16|fp32) safetensors[^\n]*? On the first (\d+) (\w+) images at `([^`]+)`: PSNR "
                        r"([\d.]+) dB\s+with\s+the fp32 weights, ([\d.]+) dB (?:with fp16 weights|as stored)", re.M)


@pytest.mark.parametrize("name", _shipped_names())
def test_shipped_model_reproduces_its_card(name, tmp_path, monkeypatch):
    # the PSNR the card records for the stored weights, measured again through dbsn.load and the
    # evaluation protocol: guards loading, padding, colour handling and fp16 storage of what ships
    from dbsn.data import list_images
    from dbsn.evaluation import evaluate

    monkeypatch.delenv("DBSN_WEIGHTS", raising=False)
    entry = bundled_models()[name]
    storage, n, test_set, noise, fp32, fp16 = CARD_CHECK.search(entry.card.read_text()).groups()
    folder = DATASETS / test_set
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    for path in list_images(folder)[:int(n)]:
        (tmp_path / path.name).symlink_to(path.resolve())
    recorded = float(fp16 if storage == "fp16" else fp32)
    assert evaluate(dbsn.load(name, device="cpu", precision="fp32"), tmp_path, noise)["psnr"] == pytest.approx(recorded, abs=0.01)
