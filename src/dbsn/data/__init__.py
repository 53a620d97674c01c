"""Image files, folders of images, and training patches."""

from .io import ImageInfo, ImageReadError, atomic_path, list_images, read_image, write_image
from .patches import ImageFolder, ImageSet, PatchSampler, cache_budget, load_folder, seeded_generator, split_validation
from .stream import BatchStream

__all__ = [
    "BatchStream",
    "ImageFolder",
    "ImageInfo",
    "ImageSet",
    "ImageReadError",
    "PatchSampler",
    "atomic_path",
    "cache_budget",
    "list_images",
    "load_folder",
    "read_image",
    "seeded_generator",
    "split_validation",
    "write_image",
]
