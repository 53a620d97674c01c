"""Where and how models run: device choice, memory format and numeric precision.

One place for these choices, shared by training, distillation and inference.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
# inference: how many mirrored and rotated copies of the input to average (dbsn.inference)
ENSEMBLES = (1, 2, 4, 8)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_ensemble(n: int) -> int:
    if n not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES} (mirrored and rotated copies averaged), got {n}")
    return n


def autocast(precision: str, device: torch.device):
    """bf16 or fp16 autocast for convolutions and matrix products; a no-op for fp32."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 (whose small gradients would underflow); inactive otherwise."""
    return torch.amp.GradScaler(device.type, enabled=check_precision(precision) == "fp16")


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when present, then Apple's MPS, else the CPU; other names go to torch as they are."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def memory_format_for(device: torch.device):
    """Channels-last on the CPU, where it measured faster for these convolutions."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def available_memory() -> int | None:
    """Bytes of memory available to new allocations, or None where the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says that memory ran out: torch's own error (CUDA), Python's, or a CPU allocator's."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", MemoryError)
    if isinstance(err, (oom, MemoryError)):
        return True
    message = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in message or "can't allocate" in message)
