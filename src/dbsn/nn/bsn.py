"""The dilated blind-spot network (D-BSN), METHOD.md section 1."""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import full_precision
from .masked import CentreMaskedConv2d


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1)


class DilatedInceptionBlock(nn.Module):
    """Three paths (5x5 dilated, 3x3 dilated, 1x1), fused by a 1x1 and a residual.

    ``h -> h + relu(1x1(cat(paths)))``, then ``1x1, ReLU, 1x1, ReLU``.
    Every spatial tap is a multiple of ``dilation``, which keeps the blind spot.
    """

    def __init__(self, width: int, dilation: int):
        super().__init__()
        d = dilation
        self.path5 = nn.Sequential(
            conv1x1(width, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 5, padding=2 * d, dilation=d), nn.ReLU(inplace=True),
        )
        self.path3 = nn.Sequential(
            conv1x1(width, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True),
        )
        self.path1 = nn.Sequential(conv1x1(width, width), nn.ReLU(inplace=True))
        self.merge = nn.Sequential(conv1x1(3 * width, width), nn.ReLU(inplace=True))
        self.tail = nn.Sequential(
            conv1x1(width, width), nn.ReLU(inplace=True),
            conv1x1(width, width), nn.ReLU(inplace=True),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.merge(torch.cat([self.path5(h), self.path3(h), self.path1(h)], dim=1))
        return self.tail(h)


class BlindSpotBranch(nn.Module):
    """Masked ``k x k`` conv, two 1x1, ``blocks`` inception blocks at dilation ``(k+1)/2``, 1x1."""

    def __init__(self, width: int, kernel_size: int, blocks: int, mask_mode: str = "mask"):
        super().__init__()
        dilation = (kernel_size + 1) // 2
        layers: list[nn.Module] = [
            CentreMaskedConv2d(width, width, kernel_size, mode=mask_mode), nn.ReLU(inplace=True),
            conv1x1(width, width), nn.ReLU(inplace=True),
            conv1x1(width, width), nn.ReLU(inplace=True),
        ]
        layers += [DilatedInceptionBlock(width, dilation) for _ in range(blocks)]
        layers.append(conv1x1(width, width))
        self.body = nn.Sequential(*layers)
        self.radius = kernel_size // 2 + blocks * 2 * dilation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(h)


class DBSN(nn.Module):
    """The D-BSN: ``y -> (mu, f)`` where output pixel p never sees input pixel p.

    Args:
        in_channels: image channels ``C`` (1 or 3).
        width: feature channels ``c`` (paper: 96).
        blocks: dilated inception blocks per branch ``B`` (paper: 8).
        mask_mode: ``"mask"`` or ``"trimmed"`` centre-masked convolutions.

    Returns from ``forward``: ``mu`` of shape ``(B, C, H, W)`` and the fused
    features ``f`` of shape ``(B, c, H, W)`` that the ``var_mu`` head reads.
    """

    MEMORY_FLOATS = 24  # inference working memory per pixel, in floats per unit of width (tile_spec)

    def __init__(self, in_channels: int = 1, width: int = 96, blocks: int = 8, mask_mode: str = "mask"):
        super().__init__()
        if in_channels < 1 or width < 1 or blocks < 0:
            raise ValueError(
                f"need in_channels >= 1, width >= 1, blocks >= 0; got {in_channels}, {width}, {blocks}"
            )
        self.width = width
        self.head = nn.Sequential(conv1x1(in_channels, width), nn.ReLU(inplace=True))
        self.branch3 = BlindSpotBranch(width, 3, blocks, mask_mode)
        self.branch5 = BlindSpotBranch(width, 5, blocks, mask_mode)
        self.fuse = conv1x1(2 * width, width)
        self.tail = nn.Sequential(
            conv1x1(width, width), nn.ReLU(inplace=True),
            conv1x1(width, width), nn.ReLU(inplace=True),
            conv1x1(width, in_channels),
        )

    def initialise(self) -> None:
        """Kaiming weights, each residual branch starting at zero."""
        kaiming_init(self)
        for block in self.modules():
            if isinstance(block, DilatedInceptionBlock):
                # Kaiming alone doubles the activation variance at every residual add
                # (output std near 25 at the paper size); starting each residual branch
                # at zero keeps mu and f near the data's scale from the first step.
                nn.init.zeros_(block.merge[0].weight)

    @property
    def radius(self) -> int:
        """Receptive-field radius in pixels (50 for the paper size: 101 x 101)."""
        return max(self.branch3.radius, self.branch5.radius)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The head and the tail always run in fp32: under bf16 autocast the tail's three 1x1
        # layers alone cost about 0.03 dB of mu (measured on BSD68), and the head would read the
        # image rounded to bf16; together they are well under 1 % of the multiply-adds.
        with full_precision(y):
            h = self.head(y.to(self.head[0].weight.dtype))
        f = self.fuse(torch.cat([self.branch3(h), self.branch5(h)], dim=1))
        with full_precision(f):
            mu = self.tail(f.to(self.tail[0].weight.dtype))
        return mu, f


def kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():  # re-apply blind-spot masks after re-initialisation
        if hasattr(m, "mask") and hasattr(m, "freeze_mask"):
            with torch.no_grad():
                m.weight.mul_(m.mask)
