"""Exponential moving average of a model's weights (Polyak averaging).

Adam with small batches leaves the last iterate jittering around its optimum: the
per-image noise level of the stage-1 estimator moves by about 0.5 (0-255 units)
from one step to the next even at the end of the cosine schedule. The average of
the recent iterates sits closer to the optimum. With ``--ema DECAY`` validation and
the saved ``model.safetensors`` use the average; the optimizer keeps stepping the
raw weights, which the checkpoint also keeps for ``--resume``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * weights`` after every step.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over the first updates,
    so that the average does not start out stuck on the initial weights. Only
    floating-point entries of the state dict are averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        state = model.state_dict()
        for name, avg in self.shadow.items():
            avg.lerp_(state[name].detach().to(avg.dtype), weight)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model``; the raw ones come back after."""
        state = model.state_dict()
        raw = {name: state[name].detach().clone() for name in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(raw, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.updates = int(state["updates"])
        for name, avg in self.shadow.items():
            avg.copy_(state["shadow"][name])
