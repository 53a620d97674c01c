"""Seeds of the random streams of a run, each derived from the run's seed and a tuple naming it.

A run draws from several streams: each rank's training patches, each worker
process's, the streams begun again after a resume, the validation patches and the
heads-phase crops. Seeds made by adding offsets to the run's seed meet (rank 0's
worker 1 and rank 1's worker 0 had the same one), so every stream's seed comes from
:class:`numpy.random.SeedSequence` with the run's seed as entropy and a key that
starts with a purpose tag. The result is 32 bits, all of which torch's CPU generator
(a Mersenne Twister seeded from 32 bits) uses.

This module imports nothing of the package, so that ``data`` and ``distributed`` can
both use it.
"""

from __future__ import annotations

import numpy as np

# purpose tags: the first element of every key, so that streams of different purposes never share a key
TRAIN, VALIDATION, HEADS_CACHE = 0, 1, 2


def stream_seed(seed: int, *key: int) -> int:
    """A 32-bit seed for the stream named by ``key`` (non-negative integers) in a run seeded ``seed``."""
    return int(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)).generate_state(1)[0])


def training_seed(seed: int, rank: int = 0, step: int = 0, worker: int | None = None) -> int:
    """The seed of the training patches of ``rank`` (``worker``: one of its worker processes) from ``step`` on.

    The stream a rank draws in its own process from step 0 is keyed by worker slot 0 and a
    worker's by its number plus one. Rank 0's own stream of a new run keeps ``seed`` itself,
    so that a plain run draws the patches it always drew and its recipes reproduce.
    """
    if rank == 0 and step == 0 and worker is None:
        return int(seed)
    return stream_seed(seed, TRAIN, rank, step, 0 if worker is None else worker + 1)
