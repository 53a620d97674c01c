"""dbsn: self-supervised image denoising with dilated blind-spot networks (DBSN, ECCV 2020)."""

from .fusion import bayes_fusion
from .denoiser import Denoiser, load
from .evaluation import evaluate
from .nn import create_model, list_models
from .noise import parse_noise

__version__ = "0.1.0"

__all__ = ["Denoiser", "bayes_fusion", "create_model", "evaluate", "list_models", "load", "parse_noise", "__version__"]
