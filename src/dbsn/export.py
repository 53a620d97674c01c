"""Export a trained student to ONNX (``dbsn export --format onnx``), checked against onnxruntime.

The exported graph maps a noisy image ``(N, C, H, W)`` float32 in [0, 1] to the
denoised one, with N, H and W free. ``onnx``, ``onnxscript`` and ``onnxruntime`` are
an optional extra: ``pip install "dbsn[onnx]"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.io import atomic_path
from .nn.registry import model_kind


class _Denoised(nn.Module):
    """The student with one tensor out: ``x_hat`` clamped to [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.model(y)["x_hat"].clamp(0, 1)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs {module}: pip install \"dbsn[onnx]\"") from None


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 18, check: bool = True) -> dict:
    """Write ``model`` (a student) as ONNX to ``path``; with ``check``, compare onnxruntime with torch.

    Returns ``{"path", "max_abs_diff"}``; the check runs on two image sizes, one of them odd.
    """
    name = model.config["name"]
    if model_kind(name) != "student":
        raise ValueError(f"ONNX export is for students (from `dbsn distill`); {name!r} is a stage-1 model")
    _require("onnx")
    _require("onnxscript")  # torch's exporter writes the graph with it
    channels = int(model.config.get("in_channels", 1))
    net = _Denoised(model.eval().float()).eval()
    example = torch.rand(1, channels, 64, 64, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            net, (example,), str(tmp), input_names=["noisy"], output_names=["denoised"], opset_version=opset,
            dynamic_shapes={"y": dims}, dynamo=True, verbose=False,
        )
    result = {"path": str(path), "max_abs_diff": None}
    if check:
        result["max_abs_diff"] = check_onnx(net, path, channels)
    return result


def check_onnx(net: nn.Module, path: str | os.PathLike, channels: int) -> float:
    """The largest absolute difference between onnxruntime and torch on two image sizes."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for size in ((64, 64), (45, 77)):
        y = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = net(y).numpy()
        got = session.run(None, {"noisy": y.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} differs from torch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
