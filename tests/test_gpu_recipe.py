"""benchmarks/gpu_recipe.sh as a CPU dry run (TINY=1) on a few made-up images: every step runs, the
models load, the summary holds finite PSNRs, and a second run skips what the first one finished."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dbsn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_recipe.sh"
# the folders the gray recipe reads by default: four training sets and two test sets
SETS = ("train400", "bsd432", "div2k_val_crop256", "sun_hays80", "bsd68", "set12")
PREFIX = "gray-gpu-tiny"


def _write_sets(root: Path) -> None:
    """Six 64 x 64 gray PNGs per set: blocks of random brightness with fine noise, a texture to denoise."""
    rng = np.random.default_rng(0)
    for name in SETS:
        (root / name).mkdir(parents=True)
        for i in range(6):
            x = np.kron(rng.random((8, 8)), np.ones((8, 8))) + 0.05 * rng.standard_normal((64, 64))
            # names unique across sets: add-noise writes two sets into one folder
            Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).save(root / name / f"{name}_{i}.png")


def _run(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the recipe is a bash script")
def test_tiny_recipe_runs_and_resumes(tmp_path):
    datasets, runs = tmp_path / "datasets", tmp_path / "runs"
    _write_sets(datasets)
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # nothing copied out of the test
    env.update(TINY="1", CHANNELS="1", DATASETS=str(datasets), RUNS=str(runs), DEVICE="cpu", PYTHON=sys.executable)

    first = _run(env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    models = [runs / name / "model.safetensors" for name in (f"{PREFIX}-stage1", f"{PREFIX}-stage1r", PREFIX)]
    for path in models:
        assert path.is_file(), path
        assert dbsn.load(path, device="cpu", precision="fp32").channels == 1
    assert dbsn.load(models[1], device="cpu").config["estimator_input"] == "residual"

    summary = json.loads((runs / f"{PREFIX}-summary.json").read_text())
    rows = summary["results"]
    assert {r["model"] for r in rows} == {f"{PREFIX}-stage1r", PREFIX}
    assert {r["set"] for r in rows} == {"bsd68", "set12"}
    assert all(math.isfinite(r["psnr"]) and r["n_images"] == 2 for r in rows)

    mtimes = [path.stat().st_mtime_ns for path in models]
    second = _run(env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in models] == mtimes  # nothing trained again
    assert second.stdout.count("skip ") == 4  # stage 1, its heads, the noisy copies, the student
    assert "dbsn train" not in second.stdout and "dbsn evaluate" not in second.stdout
