"""Blind-spot backbones: the networks ``y -> (mu, f)`` of a stage-1 model, chosen by name.

A backbone is an ``nn.Module`` built as ``factory(in_channels, width, blocks, mask_mode)`` with

- ``width``: the channels of ``f``, which the ``var_mu`` head reads;
- ``radius``: its receptive-field radius in pixels (the context tiling gives each tile);
- ``forward(y) -> (mu, f)``: ``mu`` ``(B, C, H, W)`` and ``f`` ``(B, width, H, W)``, where no output
  pixel depends on the input pixel at its own place, with the layers that read and write the image
  in fp32 under any autocast (:func:`dbsn.runtime.full_precision`);
- ``initialise()``: its starting weights, drawn from the global generator after the heads are built.

A new backbone is one module and one :func:`register_backbone`; ``create_model(..., backbone=name)``
builds a stage-1 model on it, and the registry-wide tests (the blind spot by autograd, tiling equal
to one pass) cover it.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .bsn import DBSN
from .unet_bsn import BlindSpotUNet

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    """Register ``factory(in_channels, width, blocks, mask_mode) -> nn.Module`` under ``name``."""
    def wrap(factory):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory
    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, in_channels: int, width: int, blocks: int, mask_mode: str) -> nn.Module:
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _BACKBONES[name](in_channels=in_channels, width=width, blocks=blocks, mask_mode=mask_mode)


@register_backbone("dbsn")
def dbsn_backbone(in_channels: int, width: int, blocks: int, mask_mode: str) -> nn.Module:
    """The paper's D-BSN: two dilated branches of centre-masked convolutions (METHOD.md section 1)."""
    return DBSN(in_channels, width, blocks, mask_mode)


@register_backbone("unet")
def unet_backbone(in_channels: int, width: int, blocks: int, mask_mode: str) -> nn.Module:
    """A blind-spot U-Net: shifted convolutions over four rotations, ``blocks`` pooling levels
    (Laine et al. 2019; :mod:`dbsn.nn.unet_bsn`)."""
    return BlindSpotUNet(in_channels, width, blocks, mask_mode)
