"""Synthetic noise models (METHOD.md section 5). Images in [0, 1], levels in 0-255 units.

Every model draws through a :class:`Draw`, which is either a ``torch.Generator``
(training: fresh noise per batch) or ``numpy.random.RandomState(seed)`` reset per
image (the evaluation protocol behind the published tables). The formulas are
written once, in torch, for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


class Draw:
    """Standard normal and uniform draws for one image of shape ``(C, H, W)``."""

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError


class TorchDraw(Draw):
    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def normal(self, shape):
        return torch.randn(shape, generator=self.generator, dtype=torch.float64)

    def uniform(self, shape):
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)


class NumpyDraw(Draw):
    """Draws from ``numpy.random.RandomState(seed)``, image-shaped draws in numpy's ``(H, W[, C])`` order.

    This reproduces ``numpy.random.seed(0); numpy.random.normal(0, s, x.shape)`` of the
    official evaluation: the same numbers reach the same pixels.
    """

    def __init__(self, seed: int = 0):
        self.rs = np.random.RandomState(seed)

    def normal(self, shape):
        if len(shape) == 3:
            c, h, w = shape
            z = self.rs.normal(0.0, 1.0, (h, w) if c == 1 else (h, w, c))
            return torch.from_numpy(z.reshape(h, w, c)).permute(2, 0, 1)
        return torch.from_numpy(self.rs.normal(0.0, 1.0, shape))

    def uniform(self, shape):
        return torch.from_numpy(self.rs.uniform(0.0, 1.0, shape))


class NoiseModel:
    """Base class: ``noise(x, draw)`` returns the noise for one image ``x`` ``(C, H, W)``."""

    kind: str  # the stage-1 head configuration that fits this noise: "awgn", "hg" or "mg"
    spec: str

    def noise(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        raise NotImplementedError

    def add(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``y = x + n`` for a batch ``(B, C, H, W)`` or one image, drawn from ``generator``."""
        draw = TorchDraw(generator)
        if x.dim() == 3:
            return (x.double() + self.noise(x.double(), draw)).to(x.dtype)
        return torch.stack([self.add(xi, generator) for xi in x])

    def add_protocol(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The evaluation protocol for one image: a fresh ``RandomState(seed)``, no clipping or quantising."""
        return (x.double() + self.noise(x.double(), NumpyDraw(seed))).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


@dataclass(repr=False)
class AWGN(NoiseModel):
    """Additive white Gaussian noise ``n = std/255 z``; with ``std_max`` the level is drawn per image from U(std, std_max)."""

    std: float
    std_max: float | None = None
    kind = "awgn"

    @property
    def spec(self) -> str:
        return f"awgn:{_fmt(self.std)}" + (f"-{_fmt(self.std_max)}" if self.std_max is not None else "")

    def noise(self, x, draw):
        std = self.std
        if self.std_max is not None:
            std = self.std + (self.std_max - self.std) * float(draw.uniform((1,))[0])
        return std / 255.0 * draw.normal(tuple(x.shape))


@dataclass(repr=False)
class HG(NoiseModel):
    """Heteroscedastic Gaussian noise ``n = alpha/255 x z1 + delta/255 z2``.

    ``independent=True`` draws ``z1`` and ``z2`` independently: variance
    ``((alpha x)^2 + delta^2) / 255^2`` (the official training noise, spec ``hg-indep``).
    ``independent=False`` uses ``z1 = z2``: std ``(alpha x + delta) / 255``, what the
    official evaluation draws and the published HG numbers use (spec ``hg``).
    """

    alpha: float
    delta: float
    independent: bool = False
    kind = "hg"

    @property
    def spec(self) -> str:
        return f"hg{'-indep' if self.independent else ''}:{_fmt(self.alpha)},{_fmt(self.delta)}"

    def noise(self, x, draw):
        z1 = draw.normal(tuple(x.shape))
        z2 = draw.normal(tuple(x.shape)) if self.independent else z1
        return self.alpha / 255.0 * x * z1 + self.delta / 255.0 * z2

    def var(self, x: torch.Tensor) -> torch.Tensor:
        if self.independent:
            return ((self.alpha * x) ** 2 + self.delta**2) / 255.0**2
        return ((self.alpha * x + self.delta) / 255.0) ** 2


@dataclass(repr=False)
class MG(NoiseModel):
    """Multivariate Gaussian (cross-channel correlated) noise, one covariance per image.

    ``cov = (level/255)^2 U diag(lambda) U^T`` with ``lambda_c ~ U(0, 1)`` and ``U`` a random
    orthogonal matrix. ``official=True`` takes the element-wise absolute value of that
    matrix, as the official code does (spec ``mg-official``); it is not always positive
    semi-definite, so negative eigenvalues are clipped to zero before drawing.
    """

    level: float = 75.0
    official: bool = False
    kind = "mg"

    @property
    def spec(self) -> str:
        return f"mg{'-official' if self.official else ''}:{_fmt(self.level)}"

    def covariance(self, channels: int, draw: Draw) -> torch.Tensor:
        """Draw one ``C x C`` covariance (float64)."""
        lam = draw.uniform((channels,))
        q, r = torch.linalg.qr(draw.normal((channels, channels)))
        u = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
        cov = (self.level / 255.0) ** 2 * (u * lam) @ u.T
        return cov.abs() if self.official else cov

    def noise(self, x, draw):
        c = x.shape[0]
        cov = self.covariance(c, draw)
        evals, evecs = torch.linalg.eigh(cov)
        factor = evecs * evals.clamp_min(0).sqrt()  # factor @ factor.T == cov (PSD part)
        z = draw.normal(tuple(x.shape))
        return torch.einsum("ij,jhw->ihw", factor, z)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _numbers(text: str, spec: str, count: int) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"bad noise spec {spec!r}: expected {count} non-negative number(s) after ':'")
    return values


def parse_noise(spec: str) -> NoiseModel:
    """Parse a noise spec: ``awgn:25``, ``awgn:5-50``, ``hg:40,10``, ``hg-indep:40,10``, ``mg``, ``mg:75``, ``mg-official``."""
    if isinstance(spec, NoiseModel):
        return spec
    name, _, args = spec.strip().lower().partition(":")
    if name == "awgn":
        lo, sep, hi = args.partition("-")
        if not args:
            raise ValueError(f"bad noise spec {spec!r}: give a level, e.g. 'awgn:25' or 'awgn:5-50'")
        low = _numbers(lo, spec, 1)[0]
        if sep:
            high = _numbers(hi, spec, 1)[0]
            if high < low:
                raise ValueError(f"bad noise spec {spec!r}: the range must be increasing")
            return AWGN(low, high)
        return AWGN(low)
    if name in ("hg", "hg-indep"):
        alpha, delta = _numbers(args, spec, 2)
        return HG(alpha, delta, independent=name == "hg-indep")
    if name in ("mg", "mg-official"):
        level = _numbers(args, spec, 1)[0] if args else 75.0
        return MG(level, official=name == "mg-official")
    raise ValueError(
        f"unknown noise spec {spec!r}; expected one of 'awgn:25', 'awgn:5-50', 'hg:40,10', "
        "'hg-indep:40,10', 'mg', 'mg-official'"
    )

