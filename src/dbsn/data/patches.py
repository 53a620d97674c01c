"""Folders of images, in memory or decoded on demand, and random training patches drawn with an explicit generator."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..noise import NoiseModel
from ..runtime import available_memory
from ..tiling import pad_reflect
from .io import ImageReadError, convert_channels, list_images, read_image, read_planes

log = logging.getLogger("dbsn")

GIB = 1024**3
MIN_SIDE = 8  # the smallest image side and patch size training takes: below it a patch is mostly padding
MAX_PATCH = 1024  # the largest patch size: ten times the default (96), so a larger one is taken for a typo


class ImageSet(Sequence):
    """Float32 images ``(C, H, W)``: held in memory, or decoded from their files each time one is asked for.

    The sizes are known either way, so patches can be placed without decoding. ``transforms``
    are applied, in order, to each decoded image (a fixed noisy realisation, for example).
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], tensors: Sequence[torch.Tensor] | None = None,
                 paths: Sequence[Path] | None = None, channels: int | None = None,
                 transforms: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()):
        if (tensors is None) == (paths is None):
            raise ValueError("an image set holds either tensors or the paths to decode them from")
        self.sizes = [tuple(int(v) for v in hw) for hw in sizes]
        self.tensors = None if tensors is None else list(tensors)
        self.paths = None if paths is None else list(paths)
        self.channels, self.transforms = channels, tuple(transforms)

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor]) -> ImageSet:
        if isinstance(tensors, ImageSet):
            return tensors
        return cls([t.shape[-2:] for t in tensors], tensors=tensors)

    @property
    def in_memory(self) -> bool:
        return self.tensors is not None

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        if self.tensors is not None:
            return self.tensors[i]
        path, plane = self.paths[i] if isinstance(self.paths[i], tuple) else (self.paths[i], None)
        try:
            array = read_image(path, self.channels)[0] if plane is None else read_planes(path, self.channels)[0][plane]
        except ImageReadError as err:
            raise ImageReadError(f"{err} (it was readable when training started)") from None
        if tuple(array.shape[-2:]) != self.sizes[i]:
            where = f"{path}" if plane is None else f"{path} (plane {plane})"
            raise ImageReadError(f"{where}: its size changed from {self.sizes[i]} to {tuple(array.shape[-2:])} "
                                 "since training started")
        x = torch.from_numpy(array)
        for transform in self.transforms:
            x = transform(x)
        return x

    def subset(self, indices: Sequence[int]) -> ImageSet:
        indices = list(indices)
        return ImageSet([self.sizes[i] for i in indices],
                        tensors=None if self.tensors is None else [self.tensors[i] for i in indices],
                        paths=None if self.paths is None else [self.paths[i] for i in indices],
                        channels=self.channels, transforms=self.transforms)

    def map(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> ImageSet:
        """``transform`` of every image: applied now in memory, else at each decoding (so it must be deterministic)."""
        if self.tensors is not None:
            return ImageSet(self.sizes, tensors=[transform(x) for x in self.tensors])
        return ImageSet(self.sizes, paths=self.paths, channels=self.channels,
                        transforms=(*self.transforms, transform))


@dataclass
class ImageFolder:
    """Images of one or more folders (an :class:`ImageSet`), all with the same channel count."""

    paths: list[Path | tuple[Path, int]]  # a file, or (file, plane) for a plane of a stack
    images: ImageSet
    channels: int
    skipped: list[tuple[Path, str]]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        """The size of the decoded float32 images, whether or not they are held in memory."""
        return sum(4 * self.channels * h * w for h, w in self.images.sizes)


def cache_budget(cache_gb: float | None) -> int:
    """Bytes of decoded images one process may keep: ``cache_gb``, else half the available
    memory shared by the processes of this machine (``torchrun`` sets ``LOCAL_WORLD_SIZE``)."""
    if cache_gb is not None:
        if not (math.isfinite(cache_gb) and cache_gb >= 0):
            raise ValueError(f"--cache-gb must be a finite number of 0 or more, got {cache_gb}")
        return int(cache_gb * GIB)
    free = available_memory()
    if free is None:
        free = 8 * GIB
    return free // (2 * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def load_folder(folder: str | os.PathLike | Sequence[str | os.PathLike], channels: int | None = None,
                cache_bytes: int | None = None, min_side: int = 1) -> ImageFolder:
    """Read every image of ``folder`` (or of several folders); unreadable files are logged and skipped.

    Every plane of a TIFF stack is one image (its source in ``paths`` is ``(file, plane)``).
    Every file is decoded once, to check it and learn its size. The decoded images are
    kept in memory while they fit in ``cache_bytes``; a larger set is decoded from its
    files on demand instead (``--workers`` hides the cost during training).

    Args:
        channels: 1 or 3 to convert every image; None gives gray if every image is
            gray and colour otherwise.
        cache_bytes: None for :func:`cache_budget`'s default.
        min_side: images smaller than this on a side are logged and skipped like unreadable
            files; training gives :data:`MIN_SIDE`, below which a patch is mostly padding.

    Raises:
        ValueError: when the folders hold no readable image of at least ``min_side`` pixels a side.
    """
    folders = [folder] if isinstance(folder, (str, os.PathLike)) else list(folder)
    paths = [p for f in folders for p in list_images(f)]
    budget = cache_budget(None) if cache_bytes is None else cache_bytes
    arrays: list | None = []
    kept, skipped, small, shapes, total = [], [], [], [], 0
    for p in paths:
        try:
            planes, _ = read_planes(p)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            skipped.append((p, str(err)))
            continue
        if min(planes.shape[-2:]) < min_side:
            reason = (f"{p}: {planes.shape[-2]} x {planes.shape[-1]} pixels, smaller than the {min_side} x {min_side} "
                      "training takes")
            log.warning("skipping %s", reason)
            skipped.append((p, reason))
            small.append(reason)
            continue
        for k, array in enumerate(planes):
            kept.append(p if len(planes) == 1 else (p, k))
            shapes.append(array.shape)
            total += 4 * (channels or 3) * array.shape[1] * array.shape[2]
            if arrays is not None and total > budget:
                log.info("the images take more than %.2f GB decoded: decoding them from their files on demand",
                         budget / GIB)
                arrays = None
            if arrays is not None:
                arrays.append(array)
    if not kept:
        where = ", ".join(repr(str(f)) for f in folders)
        if small:  # readable images, all of them too small
            more = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
            raise ValueError(f"no image of at least {min_side} x {min_side} pixels in {where}: {small[0]}{more}; "
                             "give larger images")
        raise ValueError(f"no readable image in {where} (looked for .png, .jpg, .tif and .bmp files)")
    if channels is None:
        channels = 1 if all(shape[0] == 1 for shape in shapes) else 3
    sizes = [shape[1:] for shape in shapes]
    if arrays is None:
        images = ImageSet(sizes, paths=kept, channels=channels)
    else:
        images = ImageSet(sizes, tensors=[torch.from_numpy(convert_channels(a, channels)) for a in arrays])
    return ImageFolder(kept, images, channels, skipped)


def check_patch_size(patch_size: int, sizes: Sequence[tuple[int, int]], where: str) -> None:
    """Refuse a patch more than twice the largest side of the training images ``sizes`` (``(H, W)``).

    Smaller images are padded by reflection up to the patch; beyond twice their side the
    padding repeats pixels, and a patch would be mostly padding.
    """
    largest = max(max(h, w) for h, w in sizes)
    if patch_size > 2 * largest:
        raise ValueError(f"--patch-size {patch_size} is more than twice the largest image side in {where} "
                         f"({largest} pixels); give --patch-size {2 * largest} or less")


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
    """Pad ``(C, H, W)`` by reflection up to ``size`` where an image is smaller than a patch."""
    return pad_reflect(x, max(0, size - x.shape[-2]), max(0, size - x.shape[-1]))


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
        noisy: Sequence[torch.Tensor] | ImageSet | None = None,
        clean: Sequence[torch.Tensor] | ImageSet | None = None,
        noise: NoiseModel | None = None,
    ):
        if noisy is None and (clean is None or noise is None):
            raise ValueError("give noisy images, or clean images together with a noise model")
        if noisy is not None and clean is not None and len(noisy) != len(clean):
            raise ValueError(f"{len(noisy)} noisy but {len(clean)} clean images: they must be aligned")
        base = noisy if noisy is not None else clean
        if not len(base):
            raise ValueError("no images to sample patches from")
        self.noisy, self.clean, self.noise = noisy, clean, noise
        self.patch_size, self.batch_size, self.generator = patch_size, batch_size, generator
        # the images themselves (in memory or decoded on demand), padded as they are cut where
        # smaller than a patch: no second copy of the set
        self._sets = [ImageSet.from_tensors(images) for images in (noisy, clean) if images is not None]
        if len(self._sets) == 2 and self._sets[0].sizes != self._sets[1].sizes:
            raise ValueError("noisy and clean images must have the same sizes, image by image")
        self._sizes = [(max(h, patch_size), max(w, patch_size)) for h, w in self._sets[0].sizes]
        areas = torch.tensor([float(h * w) for h, w in self._sizes])
        self._weights = areas / areas.sum()

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of each image, before any padding to the patch size."""
        return list(self._sets[0].sizes)

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
        fetched: dict[int, list[torch.Tensor]] = {}  # each image decoded at most once per batch
        for i in idx.tolist():
            h, w = self._sizes[i]
            top = int(torch.randint(0, h - p + 1, (1,), generator=g))
            left = int(torch.randint(0, w - p + 1, (1,), generator=g))
            k = int(torch.randint(0, 8, (1,), generator=g))
            if i not in fetched:
                fetched[i] = [_pad_to(images[i], p) for images in self._sets]
            for image, out in zip(fetched[i], patches):  # the same crop and view of aligned images
                out.append(dihedral(image[:, top : top + p, left : left + p], k))
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


__all__ = [
    "MAX_PATCH", "MIN_SIDE", "ImageFolder", "ImageSet", "PatchSampler", "available_memory", "cache_budget",
    "check_patch_size", "dihedral", "load_folder", "seeded_generator", "split_validation",
]
