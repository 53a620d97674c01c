"""Checkpoints that carry their configuration, written atomically.

Two formats:

- ``*.pt``: a training checkpoint (weights, optimizer, step, generator state and
  the run configuration), read back with ``torch.load(weights_only=True)``.
- ``*.safetensors``: weights only, with the model configuration as JSON metadata.
  No pickle; this is the format to share. Its larger weight tensors may be stored in 8
  bits (``save_weights(..., int8_from=N)``): each kernel as int8 times one fp16 scale,
  which :func:`read_checkpoint` multiplies back.

Either one rebuilds its model with :func:`load_model` and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..data.io import atomic_path
from ..nn import create_model

log = logging.getLogger("dbsn")

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"format", "config", "model", **extra}`` to ``path`` atomically."""
    payload = {"format": FORMAT_VERSION, "config": dict(model.config), "model": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


INT8_SCALE = ".int8_scale"  # key suffix of the per-kernel scales of a weight stored in 8 bits


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None,
                 int8_from: int | None = None) -> Path:
    """Write the weights as safetensors with the model configuration in the metadata.

    ``int8_from``: store every floating weight of two or more dimensions (convolutions, linear
    layers) with at least this many elements as int8 times an fp16 scale, one scale per kernel
    (per output channel for 1 x 1 kernels and linear layers), ``max |w| / 127`` over it; other
    tensors keep their dtype. A 3 x 3 kernel then takes 11 bytes against fp16's 18, at an error
    of at most half a step per weight: measure what it costs before sharing such a file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if int8_from is not None:
        for key in [k for k, v in tensors.items() if v.is_floating_point() and v.ndim >= 2 and v.numel() >= int8_from]:
            weight = tensors[key].float()
            groups = 2 if weight[0, 0].numel() > 1 else 1  # a scale per kernel, or per output channel
            scale = (weight.abs().flatten(groups).amax(dim=-1) / 127).half()
            scale[scale == 0] = 1  # a kernel of zeros (or below fp16's range) stays zeros
            tensors[key] = (weight / _expand(scale.float(), weight)).round().clamp(-127, 127).to(torch.int8)
            tensors[key + INT8_SCALE] = scale
    meta = {"format": str(FORMAT_VERSION), "config": json.dumps(model.config)}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def _expand(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``scale``, one per filter or kernel of ``weight``, shaped to multiply it."""
    return scale.view(scale.shape + (1,) * (weight.ndim - scale.ndim))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``.pt`` checkpoint or a ``.safetensors`` file as ``{"config", "model", ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # the reader raises its own types for truncated or foreign files
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); "
                             "it may be truncated: download or copy it again") from None
        for key in [k for k in state if k.endswith(INT8_SCALE)]:
            scale = state.pop(key)
            weight = key.removesuffix(INT8_SCALE)
            state[weight] = state[weight].float() * _expand(scale.float(), state[weight])
        if "config" not in meta:
            raise ValueError(f"{path}: no model configuration in its metadata; was it written by dbsn?")
        try:
            extra = {k: json.loads(v) for k, v in meta.items() if k not in ("config", "format")}
            config = json.loads(meta["config"])
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: its metadata is not valid JSON ({err}); was it written by dbsn?") from None
        return {"config": config, "model": state, **extra}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable dbsn checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{path}: not a dbsn checkpoint (no 'config' and 'model' entries)")
    return payload


def model_from_payload(payload: dict, source: str | os.PathLike = "the checkpoint") -> nn.Module:
    """The model a payload of :func:`read_checkpoint` describes, with its weights.

    Raises:
        ValueError: naming ``source``, when the configuration names no registered model or
            settings it does not take, the weights do not fit it, or a weight is NaN or infinite.
    """
    config = dict(payload["config"]) if isinstance(payload.get("config"), dict) else None
    if config is None or not isinstance(config.get("name"), str):
        raise ValueError(f"{source}: its configuration names no model; was it written by dbsn?")
    name = config.pop("name")
    try:
        model = create_model(name, **config)
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{source}: its configuration does not build a model ({name!r}: {err}); it may come from "
                         "another version of dbsn") from None
    state = payload["model"]
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source}: {len(bad)} weight tensors hold NaN or infinite values (the first {bad[0]!r}); "
                         "the training diverged or the file is damaged: use an earlier checkpoint or retrain")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).strip().splitlines()[:2])
        raise ValueError(f"{source}: its weights do not fit a {name!r} with its stored settings ({first})") from None
    return model


def load_file(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model from a checkpoint or safetensors file, in eval mode on the CPU."""
    return model_from_payload(read_checkpoint(path), path).eval()
