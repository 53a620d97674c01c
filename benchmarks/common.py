"""What the benchmark scripts share: where the datasets are, running a command, image subsets."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def run(cmd: list[str]) -> float:
    """Echo and run ``cmd``, failing loudly; returns its wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def dataset(datasets: Path, name: str) -> Path | None:
    """``datasets / name``, or None (with a message) when it is not there."""
    folder = datasets / name
    if not folder.is_dir():
        print(f"dataset {folder} not found", file=sys.stderr)
        return None
    return folder


def first_images(folder: Path, n: int | None) -> Path:
    """``folder`` itself, or a temporary folder linking its first ``n`` images."""
    from dbsn.data import list_images

    if not n:
        return folder
    subset = Path(tempfile.mkdtemp(prefix="dbsn-subset-"))
    for path in list_images(folder)[:n]:
        (subset / path.name).symlink_to(path.resolve())
    return subset
