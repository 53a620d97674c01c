"""`dbsn bundle`: a trained run packaged like the bundled models, served by name, never over a file."""

import json
import shutil

import numpy as np
import pytest
import torch

import dbsn
from dbsn.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from .conftest import write_noisy_pngs

    root = tmp_path_factory.mktemp("bundle")
    write_noisy_pngs(root / "noisy")
    write_noisy_pngs(root / "check", n=2)
    out = root / "run"
    assert main(["-q", "train", "--noisy", str(root / "noisy"), "--model", "dbsn_tiny", "--noise-model", "awgn",
                 "--steps", "4", "--patch-size", "32", "--batch-size", "4", "-o", str(out)]) == 0
    return root, out


def test_bundle_writes_weights_card_and_index_and_serves_by_name(run, tmp_path, monkeypatch, capsys):
    root, out = run
    folder = tmp_path / "models"
    assert main(["-q", "bundle", str(out), "-o", str(folder), "--name", "tiny", "--description", "tests",
                 "--check", str(root / "check"), "--noise", "awgn:25", "--default"]) == 0
    assert "wrote" in capsys.readouterr().out
    index = json.loads((folder / "index.json").read_text())
    entry = index["models"]["tiny"]
    assert entry == {"file": "tiny.safetensors", "card": "tiny.md", "channels": 1, "stage": "stage1",
                     "noise": "real noise", "description": "tests"}
    assert index["default"] == {"1": "tiny"}
    card = (folder / "tiny.md").read_text()
    assert "dbsn train" in card and "--model dbsn_tiny" in card and "4 steps" in card and "PSNR" in card
    monkeypatch.setenv("DBSN_WEIGHTS", str(folder))
    y = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    served = dbsn.load("tiny", device="cpu", precision="fp32").predict(y)["x_hat"]
    stored = dbsn.load(folder / "tiny.safetensors", device="cpu", precision="fp32").predict(y)["x_hat"]
    trained = dbsn.load(out / "model.safetensors", device="cpu", precision="fp32").predict(y)["x_hat"]
    assert torch.equal(served, stored)  # the name serves the bundled file
    assert (served - trained).abs().max() < 0.05  # a smaller storage of the trained weights, not other ones
    # a second bundle of the same name is refused, and nothing is changed
    before = (folder / "tiny.safetensors").read_bytes()
    assert main(["-q", "bundle", str(out), "-o", str(folder), "--name", "tiny"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / "tiny.safetensors").read_bytes() == before


def test_bundle_explains_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["-q", "bundle", str(tmp_path), "-o", str(tmp_path / "m"), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors is missing" in err and "\n" not in err
    assert not (tmp_path / "m").exists()


def test_storage_is_the_smallest_within_the_tolerance(run, tmp_path):
    from dbsn.bundle import choose_storage, same_weights

    root, out = run
    choice = choose_storage(out / "model.safetensors", tmp_path / "a.safetensors", root / "check", "awgn:25")
    assert choice.storage in ("int8", "fp16", "fp32") and choice.psnr_fp32 - choice.psnr_stored <= 0.01
    fixed = choose_storage(out / "model.safetensors", tmp_path / "b.safetensors", storage="fp32")
    assert fixed.storage == "fp32" and fixed.psnr_fp32 is None
    assert not same_weights(tmp_path / "b.safetensors", tmp_path / "missing.safetensors")
    assert np.isfinite(choice.psnr_fp32)


def test_a_bundled_student_names_the_noise_its_teacher_learned(run, tmp_path):
    """A student's run names no noise of its own: its entry takes its teacher's, so that the student is
    scored and chosen for that noise (paper_tables, --model by noise) instead of for none."""
    from dbsn.train.distill import DistillOptions, distill

    root, trained = run
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(trained, teacher)  # its run.json is changed below
    distill(DistillOptions(teacher=str(teacher / "model.safetensors"), noisy=str(root / "noisy"),
                           clean=[str(root / "check")], student="unet_small", student_kwargs={"widths": [8, 16, 32]},
                           steps=2, batch_size=2, patch_size=32, val_every=1000), str(student), progress_bar=False)
    assert main(["-q", "bundle", str(student), "-o", str(tmp_path / "m"), "--name", "s"]) == 0
    entry = json.loads((tmp_path / "m" / "index.json").read_text())["models"]["s"]
    assert entry["stage"] == "student" and entry["noise"] == "real noise"  # the teacher learned from --noisy
    # a teacher trained on synthetic noise gives that noise
    summary = json.loads((teacher / "run.json").read_text())
    summary["options"] = {**summary["options"], "noise": "awgn:5-50"}
    (teacher / "run.json").write_text(json.dumps(summary))
    assert main(["-q", "bundle", str(student), "-o", str(tmp_path / "m"), "--name", "s", "--overwrite"]) == 0
    assert json.loads((tmp_path / "m" / "index.json").read_text())["models"]["s"]["noise"] == "awgn:5-50"
