"""Every bundled model gives, in fp32, the outputs pinned in ``tests/data/pinned_outputs.npz``
(``python benchmarks/output_hashes.py --write``): a change to the code around the models must not
change what they compute."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "data" / "pinned_outputs.npz"


def test_bundled_models_give_the_pinned_outputs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from output_hashes import outputs
    finally:
        sys.path.pop(0)
    pinned = np.load(PINNED)
    now = outputs()
    assert sorted(now) == sorted(pinned.files), "the bundled models are not the pinned ones: rerun --write"
    for name, array in now.items():
        assert array.shape == pinned[name].shape, name
        difference = float(np.abs(array - pinned[name]).max())
        assert difference <= 1e-5, f"{name}: {difference:.2e} from the pinned output"
        assert pinned[name].std() > 0.01, name  # an image, not a constant


