"""Where and how models run: device choice, memory format and numeric precision.

One place for these choices, shared by training, distillation and inference.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
# inference and training may also leave the choice to the machine (resolve_precision)
INFERENCE_PRECISIONS = ("auto",) + PRECISIONS
# inference: how many mirrored and rotated copies of the input to average (dbsn.denoiser)
ENSEMBLES = (1, 2, 4, 8)


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    if precision not in choices:
        raise ValueError(f"precision must be one of {choices}, got {precision!r}")
    return precision


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that says so, a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(torch.backends.mkldnn.is_available() and probe is not None and probe())
    return False


def resolve_precision(precision: str, device: torch.device, bf16_exact: bool) -> str:
    """``"auto"``: bf16 where the device computes it natively and the result keeps its quality in bf16
    (``bf16_exact``: for inference, within 0.02 dB of fp32, as measured for the students; training in
    bf16 was measured to learn as well per step, and faster), else fp32."""
    if check_precision(precision, INFERENCE_PRECISIONS) != "auto":
        return precision
    return "bf16" if bf16_exact and fast_bf16(device) else "fp32"


def check_ensemble(n: int) -> int:
    if n not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES} (mirrored and rotated copies averaged), got {n}")
    return n


def autocast(precision: str, device: torch.device):
    """bf16 or fp16 autocast for convolutions and matrix products; a no-op for fp32."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def full_precision(x: torch.Tensor):
    """Autocast off, for the few layers that read or write the image itself: bf16 keeps 8 bits of
    mantissa, a step of about one grey level of an 8-bit image near white, which such a layer would
    add to every pixel as noise. The caller casts their inputs to the layers' own dtype."""
    return torch.autocast(x.device.type, enabled=False)


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
