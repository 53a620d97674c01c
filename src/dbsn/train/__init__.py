"""Training: the stage-1 loop and checkpoints."""

from ..hub import load_model, read_checkpoint, save_checkpoint, save_weights
from .stage1 import TrainOptions, train

__all__ = ["TrainOptions", "load_model", "read_checkpoint", "save_checkpoint", "save_weights", "train"]
