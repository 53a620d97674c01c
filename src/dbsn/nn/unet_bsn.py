"""A blind-spot U-Net (after Laine, Karras, Lehtinen and Aila, NeurIPS 2019): most of its work at
reduced resolution, where the D-BSN runs every layer at full resolution.

Every layer of one pass sees only pixels at or above its own row ("upward"): a 3 x 3 convolution
gets two rows of padding on top and none below; before each 2 x 2 max-pool the map moves down one
row, so a pooled value (and the nearest-neighbour upsampling of it) never reads a row below the
rows it stands for. A last one-row shift makes the view strictly above. The pass runs on the four
90-degree rotations of the image: the four half-planes strictly above, left of, below and right of
a pixel together see every pixel but that one, and 1 x 1 layers merge them. Each rotation is padded
at its own bottom and right to a multiple of the pooling (pixels no row above can see), so any
image size works, and the blind spot is exact (tests/test_nn.py checks it by autograd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import full_precision
from ..tiling import pad_reflect
from .bsn import kaiming_init


class UpwardConv(nn.Conv2d):
    """A 3 x 3 convolution whose output at row i reads input rows i-2 .. i only."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 2, 0)))


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Every row moves one down (row 0 becomes zeros): each pixel then sees what the row above saw."""
    return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


class BlindSpotUNet(nn.Module):
    """``y -> (mu, f)`` with an exact blind spot, ``blocks`` pooling levels of ``width`` channels.

    ``mask_mode`` is the D-BSN's and has no meaning here (the blind spot comes from the shifts).
    """

    # inference working memory per pixel, in floats per unit of width (tile_spec): the four kept views,
    # their merge and one pass's concatenations; measured 3.3 to 5.2 KB per pixel at width 48
    MEMORY_FLOATS = 36

    def __init__(self, in_channels: int = 1, width: int = 48, blocks: int = 4, mask_mode: str = "mask"):
        super().__init__()
        if in_channels < 1 or width < 1 or blocks < 1:
            raise ValueError(f"need in_channels >= 1, width >= 1, blocks >= 1; got {in_channels}, {width}, {blocks}")
        self.width, self.levels, self.in_channels = width, blocks, in_channels
        self.head = UpwardConv(in_channels, width)
        self.enc0 = UpwardConv(width, width)
        self.enc = nn.ModuleList(UpwardConv(width, width) for _ in range(blocks))
        # decoder level i (coarsest first): 2 * width channels, the full-resolution one (the last) width
        outs = [2 * width] * (blocks - 1) + [width]
        ins = [2 * width] + [c + width for c in outs[:-1]]
        self.dec = nn.ModuleList(nn.ModuleList([UpwardConv(c_in, c_out), UpwardConv(c_out, c_out)])
                                 for c_in, c_out in zip(ins, outs))
        self.fuse = nn.Sequential(nn.Conv2d(4 * width, 2 * width, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(2 * width, width, 1))
        self.tail = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, in_channels, 1))

    @property
    def radius(self) -> int:
        """An upper bound of the receptive-field radius: the upward reach of one pass (2 rows per
        convolution at its scale, a pooling step's shift and window, the last shift); the sideways
        reach is less, and the four rotations turn it into every direction."""
        convs = 2 * 2 + sum(2 * 2 ** level for level in range(1, self.levels + 1))  # head, enc0, encoder
        convs += sum(2 * 2 * 2 ** level for level in range(self.levels))  # two decoder convs per level
        pools = sum(3 * 2 ** level for level in range(self.levels))  # shift, window and upsampling per level
        return convs + pools + 1

    def initialise(self) -> None:
        kaiming_init(self)

    def _pass(self, y: torch.Tensor) -> torch.Tensor:
        """One upward pass on ``y`` (already rotated), padded at its bottom and right and cropped back."""
        h, w = y.shape[-2:]
        m = 2 ** self.levels
        y = pad_reflect(y, (-h) % m, (-w) % m)
        with full_precision(y):
            x = F.relu(self.head(y.to(self.head.weight.dtype)))
        x = F.relu(self.enc0(x))
        skips = [x]
        for i, conv in enumerate(self.enc):
            x = F.max_pool2d(shift_down(x), 2)
            x = F.relu(conv(x))
            if i < self.levels - 1:
                skips.append(x)
        for i, (a, b) in enumerate(self.dec):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = F.relu(b(F.relu(a(x))))
        return shift_down(x)[..., :h, :w]

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotate = lambda t, k: torch.rot90(t, k, (-2, -1))  # noqa: E731
        if torch.is_grad_enabled() and y.shape[-2] == y.shape[-1]:
            # training: the four rotations of a square batch in one pass, larger and faster convolutions
            # (their activations are kept for the backward pass either way)
            passes = self._pass(torch.cat([rotate(y, k) for k in range(4)])).chunk(4)
            views = [rotate(view, -k) for k, view in enumerate(passes)]
        else:  # one rotation at a time: a quarter of the working memory
            views = [rotate(self._pass(rotate(y, k)), -k) for k in range(4)]
        f = F.relu(self.fuse(torch.cat(views, dim=1)))
        with full_precision(f):
            mu = self.tail(f.to(self.tail[0].weight.dtype))
        return mu, f
