"""Folders of images in memory, and random training patches drawn with an explicit generator."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..noise import NoiseModel
from .io import ImageReadError, convert_channels, list_images, read_image

log = logging.getLogger("dbsn")


@dataclass
class ImageFolder:
    """Images of one folder as float32 tensors ``(C, H, W)``, all with the same channel count."""

    paths: list[Path]
    images: list[torch.Tensor]
    channels: int
    skipped: list[tuple[Path, str]]

    def __len__(self) -> int:
        return len(self.images)


def load_folder(folder: str | os.PathLike | Sequence[str | os.PathLike], channels: int | None = None) -> ImageFolder:
    """Read every image of ``folder`` (or of several folders); unreadable files are logged and skipped.

    Args:
        channels: 1 or 3 to convert every image; None gives gray if every image is
            gray and colour otherwise.

    Raises:
        ValueError: when the folders hold no readable image.
    """
    folders = [folder] if isinstance(folder, (str, os.PathLike)) else list(folder)
    paths = [p for f in folders for p in list_images(f)]
    arrays, kept, skipped = [], [], []
    for p in paths:
        try:
            array, _ = read_image(p)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            skipped.append((p, str(err)))
            continue
        arrays.append(array)
        kept.append(p)
    if not arrays:
        where = ", ".join(repr(str(f)) for f in folders)
        raise ValueError(f"no readable image in {where} (looked for .png, .jpg, .tif and .bmp files)")
    if channels is None:
        channels = 1 if all(a.shape[0] == 1 for a in arrays) else 3
    images = [torch.from_numpy(convert_channels(a, channels)) for a in arrays]
    return ImageFolder(kept, images, channels, skipped)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips and transposes of square patches ``(..., H, W)``."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad ``(C, H, W)`` up to ``size`` where an image is smaller than a patch."""
    ph, pw = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]


class PatchSampler:
    """Random square patches with flips and transposes.

    Either ``noisy`` images are given (real noisy images, or clean images with one
    fixed noisy realisation each), optionally with their aligned ``clean`` versions;
    or only ``clean`` images and a ``noise`` model, which draws fresh noise for every
    batch. All randomness comes from ``generator``.
    """

    def __init__(
        self,
        patch_size: int,
        batch_size: int,
        generator: torch.Generator,
        noisy: list[torch.Tensor] | None = None,
        clean: list[torch.Tensor] | None = None,
        noise: NoiseModel | None = None,
    ):
        if noisy is None and (clean is None or noise is None):
            raise ValueError("give noisy images, or clean images together with a noise model")
        if noisy is not None and clean is not None and len(noisy) != len(clean):
            raise ValueError(f"{len(noisy)} noisy but {len(clean)} clean images: they must be aligned")
        base = noisy if noisy is not None else clean
        if not base:
            raise ValueError("no images to sample patches from")
        self.noisy, self.clean, self.noise = noisy, clean, noise
        self.patch_size, self.batch_size, self.generator = patch_size, batch_size, generator
        # the images themselves, padded only where smaller than a patch: no second copy of the set
        self._sets = [[_pad_to(x, patch_size) for x in images] for images in (noisy, clean) if images is not None]
        areas = torch.tensor([float(x.shape[-2] * x.shape[-1]) for x in self._sets[0]])
        self._weights = areas / areas.sum()
        if len(self._sets) == 2 and any(a.shape[-2:] != b.shape[-2:] for a, b in zip(*self._sets)):
            raise ValueError("noisy and clean images must have the same sizes, image by image")

    def sample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch ``(y, x)``: noisy patches ``(N, C, P, P)`` and clean ones, or None without clean images.

        ``generator`` replaces the sampler's own for this batch (a worker process's stream).
        """
        return self.sample_with_index(generator)[:2]

    def sample_with_index(self, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """Like :meth:`sample`, plus the index of the image each patch came from."""
        g, p = (generator if generator is not None else self.generator), self.patch_size
        idx = torch.multinomial(self._weights, self.batch_size, replacement=True, generator=g)
        patches: list[list[torch.Tensor]] = [[] for _ in self._sets]
        for i in idx.tolist():
            h, w = self._sets[0][i].shape[-2:]
            top = int(torch.randint(0, h - p + 1, (1,), generator=g))
            left = int(torch.randint(0, w - p + 1, (1,), generator=g))
            k = int(torch.randint(0, 8, (1,), generator=g))
            for images, out in zip(self._sets, patches):  # the same crop and view of aligned images
                out.append(dihedral(images[i][:, top : top + p, left : left + p], k))
        batches = [torch.stack(out) for out in patches]
        if self.noisy is None:
            return self.noise.add(batches[0], g), batches[0], idx.tolist()
        return batches[0], batches[1] if self.clean is not None else None, idx.tolist()


def split_validation(n_images: int, fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)``: a random ``fraction`` of the images is held out (none if fewer than 4)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(n_images * fraction)) if n_images >= 4 else 0
    order = torch.randperm(n_images, generator=generator).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


__all__ = ["ImageFolder", "PatchSampler", "dihedral", "load_folder", "seeded_generator", "split_validation"]
