"""Noise models: AWGN, heteroscedastic Gaussian (HG) and multivariate Gaussian (MG)."""

from .models import AWGN, HG, MG, Draw, NoiseModel, NumpyDraw, TorchDraw, parse_noise

__all__ = ["AWGN", "HG", "MG", "Draw", "NoiseModel", "NumpyDraw", "TorchDraw", "parse_noise"]
