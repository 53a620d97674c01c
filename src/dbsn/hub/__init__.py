"""Models as files and names, below training and inference: reading and writing weights and
checkpoints (:mod:`.files`), the bundled models and their cards (:mod:`.bundled`), and the one
:func:`load_model` that every caller goes through.
"""

from __future__ import annotations

import os

from torch import nn

from .bundled import (BundledModel, bundled_models, default_model, default_names, resolve_model,
                      weights_folder)
from .files import (INT8_SCALE, load_file, model_from_payload, read_checkpoint, save_checkpoint,
                    save_weights)


def load_model(source: str | os.PathLike) -> nn.Module:
    """The model in a checkpoint (``.pt``), a weights file (``.safetensors``) or a bundled model by name,
    with its weights, in eval mode on the CPU."""
    return load_file(resolve_model(source))


__all__ = ["BundledModel", "INT8_SCALE", "bundled_models", "default_model", "default_names", "load_file",
           "load_model", "model_from_payload", "read_checkpoint", "resolve_model", "save_checkpoint",
           "save_weights", "weights_folder"]
