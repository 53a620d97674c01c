"""Centre-masked convolutions: the first layer of each blind-spot branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_MODES = ("mask", "trimmed")


class CentreMaskedConv2d(nn.Conv2d):
    """A ``k x k`` convolution whose centre tap is always zero.

    Two variants, as in the official DBSN code:

    - ``"mask"``: zero the centre weight (the default).
    - ``"trimmed"``: also rescale each output by ``(k*k - 1) / n_valid``, where
      ``n_valid`` counts the non-centre taps that fall inside the image, so that
      border pixels are not darkened by the zero padding.

    The mask is applied to the weight on every call, so the centre can never
    become nonzero through training. :meth:`freeze_mask` bakes it in once for
    inference.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mode: str = "mask"):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if mode not in MASK_MODES:
            raise ValueError(f"mode must be one of {MASK_MODES}, got {mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mode = mode
        mask = torch.ones(1, 1, kernel_size, kernel_size)
        mask[..., kernel_size // 2, kernel_size // 2] = 0
        self.register_buffer("mask", mask, persistent=False)
        self._frozen = False
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def freeze_mask(self) -> None:
        """Apply the mask to the stored weight once and skip it from now on."""
        with torch.no_grad():
            self.weight.mul_(self.mask)
        self._frozen = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self._frozen else self.weight * self.mask
        out = F.conv2d(h, weight, None, padding=self.padding)
        if self.mode == "trimmed":
            ones = torch.ones(1, 1, h.shape[-2], h.shape[-1], dtype=h.dtype, device=h.device)
            n_valid = F.conv2d(ones, self.mask.to(h.dtype), padding=self.padding)
            out = out * (self.mask.sum() / n_valid)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out
