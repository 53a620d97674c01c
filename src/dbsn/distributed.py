"""Training on many processes with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m dbsn train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` for every process; :func:`setup` reads them, joins the process group
(NCCL on CUDA, gloo on the CPU) and picks each process's device. Without them, or with
one process, nothing is initialised and training takes the same code path as always.

Only rank 0 writes: the log, the progress bar, checkpoints and the final weights.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runtime import resolve_device
from .seeds import training_seed


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int, step: int = 0) -> int:
        """The seed of this rank's training patches from ``step`` on (:func:`dbsn.seeds.training_seed`).

        Rank 0 of a new run keeps ``seed``: one process reproduces a plain run.
        """
        return training_seed(seed, self.rank, step)

    def shard(self, items: list) -> list:
        """This rank's share of ``items`` (every rank gets at least one)."""
        if not self.enabled:
            return items
        mine = items[self.rank :: self.world_size]
        return mine or [items[self.rank % len(items)]]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (so that all ranks agree on a time budget)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def gather_floats(self, value: float) -> list[float]:
        """``value`` from every rank, in rank order."""
        if not self.enabled:
            return [value]
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [float(v.item()) for v in out]

    @property
    def device(self) -> torch.device:
        """The device collectives run on: this rank's GPU under NCCL, else the CPU."""
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def from_environment() -> Context:
    """The rank layout ``torchrun`` describes in the environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def setup(device_name: str) -> tuple[Context, torch.device]:
    """Join the process group when launched by ``torchrun``; returns the context and this rank's device."""
    ctx = from_environment()
    device = resolve_device(device_name)
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown(ctx: Context) -> None:
    """Leave the process group, after freeing whatever still refers to it (DDP wrappers)."""
    if ctx.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: Context, device: torch.device, partial: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there are several processes, else as it is.

    ``partial``: some steps leave parameters unused (the three-phase schedule trains a
    part of the model at a time), so DDP must look for them; it costs a graph traversal
    per step, which a student, whose every step uses every parameter, does not pay.
    """
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=partial)


def parameter_checksum(model: torch.nn.Module) -> float:
    """A number that differs when the parameters differ (to check that ranks agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))
