"""`dbsn train` under torchrun: two CPU processes (gloo), then a resume into one process."""

import json
import os
import subprocess
import sys

import pytest

from dbsn.cli import main
from dbsn.distributed import Context


def _torchrun(args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dbsn", "-q", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from .conftest import write_noisy_pngs

    root = tmp_path_factory.mktemp("ddp")
    noisy = root / "noisy"
    write_noisy_pngs(noisy)
    run = root / "run"
    done = _torchrun(["train", "--noisy", str(noisy), "--model", "dbsn_tiny", "--noise-model", "awgn",
                      "--steps", "6", "--patch-size", "32", "--batch-size", "2", "--val-every", "3",
                      "--save-every", "3", "--device", "cpu", "-o", str(run)])
    assert done.returncode == 0, done.stdout + done.stderr
    return root, noisy, run


def test_two_processes_agree_and_write_once(ddp_run):
    root, _, run = ddp_run
    summary = json.loads((run / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    first, second = summary["rank_parameter_checksums"]
    assert first == second  # DDP kept the two ranks' parameters identical
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "log.csv", "model.safetensors", "run.json"]
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6  # one header, one row per step: a single writer


def test_resume_into_one_process(ddp_run):
    _, _, run = ddp_run
    assert main(["-q", "train", "--resume", "--steps", "8", "--device", "cpu", "-o", str(run)]) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 1
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 8


def test_shards_and_seeds():
    items = list(range(7))
    ranks = [Context(rank=r, world_size=3) for r in range(3)]
    shards = [c.shard(items) for c in ranks]
    assert sorted(sum(shards, [])) == items and all(shards)
    assert len({c.seed(5) for c in ranks}) == 3 and ranks[0].seed(5) == 5
    assert Context(rank=2, world_size=3).shard([9]) == [9]  # fewer items than ranks: never empty
    assert Context().shard(items) == items and not Context().enabled


def test_distill_under_two_processes_agrees(ddp_run):
    root, noisy, run = ddp_run
    out = root / "student"
    done = _torchrun(["distill", "--teacher", str(run / "model.safetensors"), "--noisy", str(noisy), "--clean",
                      str(noisy), "--student", "mwcnn_small", "--widths", "8,16,32", "--steps", "4",
                      "--patch-size", "32", "--batch-size", "4", "--val-every", "2", "--device", "cpu", "-o", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "run.json").read_text())
    first, second = summary["rank_parameter_checksums"]
    assert summary["world_size"] == 2 and first == second
    assert len((out / "log.csv").read_text().strip().splitlines()) == 1 + 4
    assert done.stdout.count('"steps"') == 1  # one report, rank 0's
