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
    # one of each file, written once by rank 0 (the quality report too: the run is on noisy images)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "log.csv", "model.safetensors", "report.json",
                                                     "report.png", "run.json"]
    assert "quality_report" in summary
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


def test_every_stream_of_a_run_has_its_own_seed():
    from dbsn.seeds import HEADS_CACHE, VALIDATION, stream_seed, training_seed

    for seed in (0, 5):
        seeds = [training_seed(seed, rank, step, worker) for rank in range(4) for step in (0, 1, 2, 7, 500)
                 for worker in (None, 0, 1, 2, 3)]
        seeds += [stream_seed(seed, VALIDATION)] + [stream_seed(seed, HEADS_CACHE, rank) for rank in range(4)]
        assert len(set(seeds)) == len(seeds) == 4 * 5 * 5 + 5
        assert all(0 <= s < 2**32 for s in seeds)
        assert training_seed(seed) == seed == Context().seed(seed)  # a plain run keeps its seed
    assert training_seed(0, 1, 3, 2) == training_seed(0, 1, 3, 2) != training_seed(1, 1, 3, 2)
    assert Context(rank=1, world_size=2).seed(0, 7) == training_seed(0, 1, 7)


def test_rank_0_worker_1_and_rank_1_worker_0_draw_different_batches():
    # with seeds spaced by one stride these two streams were the same
    import numpy as np
    import torch

    from dbsn.data import BatchStream, PatchSampler, seeded_generator

    from .conftest import smooth_image

    rng = np.random.default_rng(0)
    sampler = PatchSampler(16, 4, seeded_generator(1), noisy=[torch.from_numpy(smooth_image(rng, 40))
                                                                for _ in range(3)])
    rank0 = BatchStream(sampler.sample, seeded_generator(0), workers=2, seed=0, rank=0)
    rank1 = BatchStream(sampler.sample, seeded_generator(0), workers=1, seed=0, rank=1)
    rank0.next()  # worker 0's
    assert not torch.equal(rank0.next()[0], rank1.next()[0])  # worker 1's and rank 1's worker 0's
