"""The memory figure each architecture declares for tiling holds: one untiled pass, measured, stays within it,
in fp32 and in bf16 (budgeted at a share of the fp32 figure).

The measurement runs in a fresh interpreter (Linux only): before each pass the freed heap is
returned to the system (``malloc_trim``) and the peak resident size is reset (``clear_refs``), so
the peak the pass reaches less the resident size before it is the memory that pass added.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import ctypes, gc, json, sys
import torch
import dbsn
from dbsn.denoiser import Denoiser

torch.set_num_threads(2)
libc = ctypes.CDLL("libc.so.6")


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024


out = []
for name, kwargs, precision, side in json.loads(sys.argv[1]):
    model = dbsn.create_model(name, **kwargs)
    d = Denoiser(model, device="cpu", precision=precision, max_memory="1T")
    y = torch.rand(1, d.channels, side, side, generator=torch.Generator().manual_seed(0))
    d.predict(y[..., :32, :32])  # first-call allocations (threads, kernels) are not the image's
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    d.predict(y)
    added = status("VmHWM") - before
    out.append({"added": added, "declared": d.tile_spec().bytes_per_pixel * side * side})
    del model, d, y
    gc.collect()
    libc.malloc_trim(0)
print(json.dumps(out))
"""

# every registered architecture, gray and colour (both colour forms for the students), each noise model
CASES = [
    ("dbsn_small", {"in_channels": 1}, 256),
    ("dbsn_small", {"in_channels": 3, "noise_model": "mg"}, 256),
    ("dbsn_tiny", {"in_channels": 1, "noise_model": "hg"}, 256),
    ("dbsn", {"in_channels": 1}, 192),
    ("bsn_unet", {"in_channels": 3, "noise_model": "awgn"}, 256),
    ("mwcnn_small", {"in_channels": 1}, 256),
    ("mwcnn_small", {"in_channels": 3, "colour": "opponent", "widths": (64, 128, 256), "depth": 4}, 256),
    ("unet_small", {"in_channels": 3}, 256),
    ("mwcnn", {"in_channels": 3, "colour": "joint"}, 192),
]


def _measure(precision: str) -> list[dict]:
    cases = [(name, kwargs, precision, side) for name, kwargs, side in CASES]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()),
                    reason="peak memory is read from /proc")
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_one_pass_stays_within_the_declared_memory(precision):
    for (name, kwargs, side), r in zip(CASES, _measure(precision)):
        case = f"{name} {kwargs} {precision} {side}x{side}: added {r['added'] / 2**20:.0f} MB, " \
               f"declared {r['declared'] / 2**20:.0f} MB"
        assert r["added"] <= r["declared"], case
        # and the reading is a reading: a pass of these sizes adds at least a tenth of its figure
        assert r["added"] >= r["declared"] / 10, case
