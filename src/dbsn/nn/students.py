"""Ordinary (non-blind) denoisers for stage 2: the students that distillation trains.

Both predict the noise residual, ``x_hat = y - net(y)``, work for any channel count
and any image size (they pad internally to a multiple of their downsampling factor
and crop back), and return ``{"x_hat": ...}`` like the stage-1 model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import TileSpec, pad_reflect
from .registry import register_model


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D Haar transform: ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` as ``[LL, LH, HL, HH]`` blocks."""
    b, c, h, w = x.shape
    q = F.pixel_unshuffle(x, 2).reshape(b, c, 4, h // 2, w // 2)  # the 2x2 neighbours a, b, c, d
    a, b_, c_, d = q.unbind(2)
    return 0.5 * torch.cat([a + b_ + c_ + d, -a - b_ + c_ + d, -a + b_ - c_ + d, a - b_ - c_ + d], dim=1)


def haar_iwt(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`."""
    ll, lh, hl, hh = torch.chunk(z, 4, dim=1)
    a = ll - lh - hl + hh
    b = ll - lh + hl - hh
    c = ll + lh - hl - hh
    d = ll + lh + hl + hh
    n, ch, h, w = ll.shape
    return F.pixel_shuffle(0.5 * torch.stack([a, b, c, d], dim=2).reshape(n, ch * 4, h, w), 2)


def conv_relu(c_in: int, c_out: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _pad_to_multiple(y: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom and right by reflection to a multiple of ``multiple``; also the original size.

    Repeating the edge row instead cost the bundled gray student 2.7 dB on BSD68 at
    sigma 50, spread over some 60 pixels from the bottom and right edges. Training
    patches are multiples already and never see the padding.
    """
    h, w = y.shape[-2:]
    return pad_reflect(y, (-h) % multiple, (-w) % multiple), (h, w)


class MWCNN(nn.Module):
    """Multi-level wavelet CNN (Liu et al. 2018): a U-Net whose down- and up-sampling are Haar DWT/IWT.

    Args:
        in_channels: image channels.
        widths: feature channels at each wavelet level (paper: 160, 256, 256).
        depth: 3x3 conv layers per level on each side (paper: 4).
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (160, 256, 256), depth: int = 4):
        super().__init__()
        widths = tuple(widths)
        self.in_channels, self.levels, self.widths, self.depth = in_channels, len(widths), widths, depth
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(widths):
            self.down.append(conv_relu(4 * c_prev, c, depth))
            up = conv_relu(c, c, depth - 1) if depth > 1 else nn.Identity()
            self.up.append(nn.Sequential(up, nn.Conv2d(c, 4 * c_prev, 3, padding=1),
                                         *([] if i == 0 else [nn.ReLU(inplace=True)])))
            c_prev = c

    def tile_spec(self) -> TileSpec:
        # level i works at scale s = 2^(i+1): 2 * depth 3x3 convs reach depth * 2s pixels, and the
        # Haar blocks of the DWT and the IWT reach s / 2 each
        radius = sum(2 ** (i + 1) * (2 * self.depth + 1) for i in range(self.levels))
        floats = sum(4 * w / 4 ** (i + 1) for i, w in enumerate(self.widths)) + 16 * self.in_channels
        return TileSpec(radius=radius, align=2**self.levels, bytes_per_pixel=int(4 * 4 * floats))

    def forward(self, y: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        padded, (h, w) = _pad_to_multiple(y, 2**self.levels)
        skips, h_ = [], padded
        for down in self.down:
            skips.append(h_)
            h_ = down(haar_dwt(h_))
        for up, skip in zip(reversed(self.up), reversed(skips)):
            h_ = haar_iwt(up(h_)) + (skip if skip is not padded else 0)
        return {"x_hat": y - h_[..., :h, :w]}


class UNetSmall(nn.Module):
    """A light CPU student: a small U-Net with strided-conv down- and transposed-conv up-sampling.

    Most of its work runs at 1/4 and 1/16 of the pixels, so its cost per pixel is a small
    fraction of the D-BSN's, whose every layer runs at full resolution.
    """

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128), depth: int = 2):
        super().__init__()
        widths = tuple(widths)
        self.in_channels, self.levels, self.widths, self.depth = in_channels, len(widths) - 1, widths, depth
        self.inc = conv_relu(in_channels, widths[0], depth)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 2, stride=2), nn.ReLU(inplace=True),
                          conv_relu(widths[i + 1], widths[i + 1], depth))
            for i in range(self.levels)
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.levels))
        self.decs = nn.ModuleList(conv_relu(2 * widths[i], widths[i], depth) for i in range(self.levels))
        self.out = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def tile_spec(self) -> TileSpec:
        # at level i (scale 2^i): the stride-2 conv and the transposed conv reach 2^i each, the
        # depth convs of the encoder at level i + 1 reach depth * 2^(i+1), the decoder's depth * 2^i
        radius = self.depth + 1 + sum(2**i * (2 + 3 * self.depth) for i in range(self.levels))
        floats = sum(5 * w / 4**i for i, w in enumerate(self.widths)) + 4 * self.in_channels
        return TileSpec(radius=radius, align=2**self.levels, bytes_per_pixel=int(4 * 4 * floats))

    def forward(self, y: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        padded, (h, w) = _pad_to_multiple(y, 2**self.levels)
        skips, f = [], self.inc(padded)
        for down in self.downs:
            skips.append(f)
            f = down(f)
        for i in reversed(range(self.levels)):
            f = self.decs[i](torch.cat([self.ups[i](f), skips[i]], dim=1))
        return {"x_hat": y - self.out(f)[..., :h, :w]}


@register_model("mwcnn", kind="student", widths=(160, 256, 256), depth=4)
def mwcnn(**kwargs) -> MWCNN:
    """The paper's student: MWCNN with three Haar levels."""
    return MWCNN(**kwargs)


@register_model("mwcnn_small", kind="student", widths=(32, 64, 128), depth=2)
def mwcnn_small(**kwargs) -> MWCNN:
    """A CPU-sized MWCNN."""
    return MWCNN(**kwargs)


@register_model("unet_small", kind="student", widths=(32, 64, 128), depth=2)
def unet_small(**kwargs) -> UNetSmall:
    """The light CPU student."""
    return UNetSmall(**kwargs)
