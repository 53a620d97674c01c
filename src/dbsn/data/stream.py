"""Training batches drawn in this process or in worker processes (``--workers N``).

A GPU can take batches faster than one CPU process crops, flips and adds noise to
them. With ``workers > 0`` a :class:`torch.utils.data.DataLoader` runs ``N`` worker
processes; each draws batches with its own generator, seeded from the run's seed, its
rank, the step its stream began at and the worker's number
(:func:`dbsn.seeds.training_seed`). The loader takes batches from the workers in turn,
so a run is reproducible for a given number of workers. With ``workers = 0`` every
batch is drawn here from the task's generator, whose state the checkpoints save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..seeds import training_seed


def check_workers(workers: int) -> None:
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")


class _Batches(IterableDataset):
    def __init__(self, make_batch: Callable[[torch.Generator], tuple], seed: int, rank: int, step: int):
        super().__init__()
        self.make_batch, self.seed, self.rank, self.step = make_batch, seed, rank, step

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        generator = torch.Generator()
        generator.manual_seed(training_seed(self.seed, self.rank, self.step, worker))
        torch.set_num_threads(1)  # the workers share the machine with training
        while True:
            yield self.make_batch(generator)


class BatchStream:
    """``next()`` gives the next batch of ``make_batch(generator)``.

    ``seed`` is the run's seed and ``rank`` this process's rank: with workers, they and the
    step the stream began at (0, or the step of a resume) seed each worker's generator.
    """

    def __init__(self, make_batch: Callable[[torch.Generator], tuple], generator: torch.Generator, workers: int = 0,
                 seed: int = 0, rank: int = 0):
        check_workers(workers)
        self.make_batch, self.generator, self.workers = make_batch, generator, workers
        self.seed, self.rank, self.step = seed, rank, 0
        self._batches: Iterator[tuple] | None = None

    def next(self) -> tuple:
        if self.workers == 0:
            return self.make_batch(self.generator)
        if self._batches is None:
            loader = DataLoader(_Batches(self.make_batch, self.seed, self.rank, self.step), batch_size=None,
                                num_workers=self.workers, persistent_workers=True, prefetch_factor=4)
            self._batches = iter(loader)
        return next(self._batches)

    def restart(self, step: int) -> None:
        """Worker streams begin again, seeded for ``step`` (after a resume: their states are not saved)."""
        self.step = step
        self._batches = None
