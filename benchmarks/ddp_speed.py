"""Training throughput with 1 process and under torchrun with several, on this machine.

    python benchmarks/ddp_speed.py --processes 1,2 --steps 60 -o runs/ddp_speed

Each row is a fresh `dbsn train` run of the same model, batch size per process and
steps, one after the other. One process takes the plain path (no process group); N > 1
runs under `torchrun --standalone --nproc_per_node=N` with DistributedDataParallel (gloo
on the CPU, NCCL with `--device cuda`). The cores are shared out: each process gets
``--threads / N`` intra-op threads (default: all cores). Samples per second is
N x batch size x the median steps per second over the logged steps (the first 10 are
warm-up and skipped), so the rows compare the work done, not the steps taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import DATASETS, dataset, machine
from train_speed import steps_per_second


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="bsd68", help="clean images, with fixed seed-0 noise at std 25")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--model", default="dbsn_small")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts, one run each")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--patch-size", type=int, default=96)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads shared by the processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args()

    clean = dataset(args.datasets, args.set)
    if clean is None:
        return 2
    rows = []
    for n in (int(v) for v in args.processes.split(",")):
        run_dir = args.out / f"{n}proc"
        threads = max(1, args.threads // n)
        train = ["train", "--clean", str(clean), "--noise", "awgn:25", "--fixed-noise", "--model", args.model,
                 "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--patch-size",
                 str(args.patch_size), "--val-fraction", "0", "--val-every", str(args.steps),
                 "--save-every", str(args.steps), "--device", args.device, "-o", str(run_dir)]
        if (run_dir / "checkpoint.pt").exists():
            print(f"{run_dir} exists: reusing its log")
        else:
            launcher = ([sys.executable, "-m", "dbsn"] if n == 1 else
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                         "-m", "dbsn"])
            cmd = [*launcher, "-q", *train]
            print("$ OMP_NUM_THREADS=%d %s" % (threads, " ".join(cmd)), flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        sps = steps_per_second(run_dir / "log.csv")
        rows.append((n, threads, sps, n * args.batch_size * sps))

    print(f"\n{args.model}, {args.steps} steps, batch {args.batch_size} x {args.patch_size}^2 per process, "
          f"{args.set}, {args.device}; {machine()}")
    print(f"{'processes':<10}{'threads/proc':>13}{'steps/s':>9}{'samples/s':>11}{'x 1 proc':>10}")
    base = rows[0][3]
    for n, threads, sps, samples in rows:
        print(f"{n:<10}{threads:>13}{sps:>9.3f}{samples:>11.2f}{samples / base:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
