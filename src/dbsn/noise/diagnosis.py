"""Know the noise before training on it: its spatial correlation, its dependence on the signal and its
level, read from noisy images alone.

The noise is read where the image is flat. Every image is cut into ``BLOCK`` x ``BLOCK`` blocks; in
each block and channel a quadratic surface is fitted and removed, and what remains is taken as
noise in the flattest blocks: per intensity bin (the blocks sorted by their mean), the share
``FLAT_SHARE`` with the least residual variance. Texture left in those blocks reads as noise too, so
the estimates are upper bounds on images with little flat area.

- **Correlation**: the normalised autocorrelation ``rho(dy, dx)`` of the residuals inside the blocks,
  for lags up to ``MAX_LAG``, less the small negative correlation that removing the surfaces alone
  gives white noise. Noise independent from pixel to pixel (AWGN, HG, Poisson-Gaussian
  microscope noise) gives ``rho`` about 0 at every lag but (0, 0); camera noise after demosaicking
  and compression gives 0.2 to 0.7 at lag 1. The *correlation length* is the smallest lag ``d`` from
  which ``rho`` stays under ``CORRELATED`` along both axes and the diagonal.
- **Signal dependence**: the noise variance of each intensity bin, fitted by ``var = a x + b``
  (Poisson-Gaussian); the noise is called signal-dependent when the fitted std at the brightest bin
  is more than ``SIGNAL_DEPENDENT`` times the one at the darkest, or less than its inverse.
- **Level**: the median std over the bins, in 0-255 units; and each channel's own, read the same way from
  its blocks alone. Cameras amplify the colour channels by different gains (the blue one of a phone
  photograph is often twice as noisy as the green), and the flattest blocks of all channels pooled
  come from the quietest channel: the pooled level is the quietest channel's, not the image's.
  :func:`noise_level` gives the root mean square of the channel levels, the noise's mean variance.

A blind-spot network assumes noise independent from pixel to pixel: where the diagnosis finds a
correlation length ``L > 1``, the network must not see neighbours closer than ``L``, which a
pixel-shuffle stride of at least ``L`` gives (:mod:`dbsn.nn.shuffle`). :func:`recommend` turns a
diagnosis into the options of ``dbsn train``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

BLOCK = 16
MAX_LAG = 6
LONG_LAGS = (4, 5, 6)  # lags where camera noise has lost its correlation and texture has not
FLAT_SHARE = 0.25
BINS = 8
FEW_BLOCKS = 32  # fewer flat blocks than this leave the correlations uncertain by about 0.05 or more
CORRELATED = 0.1  # |rho| from which neighbours at that lag are said to share noise
SIGNAL_DEPENDENT = 1.5  # ratio of the fitted std, brightest to darkest bin
# pure noise: the median variance of the flattest FLAT_SHARE of blocks is this share of the true one
# (the FLAT_SHARE / 2 quantile of chi-square with BLOCK^2 - SURFACE_TERMS degrees of freedom over them, by the
# Wilson-Hilferty approximation; z = -1.150 is the standard normal's 0.125 quantile)
SURFACE_TERMS = 6  # a quadratic surface per block: 1, x, y, x^2, xy, y^2
_K = BLOCK * BLOCK - SURFACE_TERMS
FLAT_BIAS = (1 - 2 / (9 * _K) - 1.150 * math.sqrt(2 / (9 * _K))) ** 3
# AP-BSN's strides (Lee et al. 2022): 5 in training breaks the correlation of camera noise, 2 at
# inference keeps more detail; a longer correlation gets a training stride one beyond it
TRAIN_STRIDE, INFER_STRIDE, MAX_STRIDE = 5, 2, 8


@dataclass
class Diagnosis:
    """What :func:`diagnose` read from the noise (levels in 0-255 units)."""

    images: int
    blocks: int
    rho: list[list[float]]  # rho[dy][dx], dy, dx in 0..MAX_LAG (rho[0][0] = 1)
    correlation_length: int  # 1: independent from pixel to pixel
    std: float  # median over the intensity bins
    bin_intensity: list[float] = field(default_factory=list)  # the bins' mean intensity, in [0, 1]
    bin_std: list[float] = field(default_factory=list)  # the noise std measured in each bin
    fit: tuple[float, float] = (0.0, 0.0)  # var = a x + b, in [0, 1] units: (a, b)
    channel_std: list[float] = field(default_factory=list)  # each channel's level, read from its blocks alone

    @property
    def rho1(self) -> float:
        """The mean correlation of horizontal and vertical neighbours."""
        return 0.5 * (self.rho[0][1] + self.rho[1][0])

    @property
    def mean_std(self) -> float:
        """The root mean square of the channel levels: the std of the noise's mean variance over the channels."""
        return math.sqrt(sum(s * s for s in self.channel_std) / len(self.channel_std)) if self.channel_std else self.std

    @property
    def correlated(self) -> bool:
        return self.correlation_length > 1

    @property
    def signal_ratio(self) -> float:
        """The fitted std at the brightest bin over the one at the darkest (1 for AWGN)."""
        if len(self.bin_intensity) < 2:
            return 1.0
        a, b = self.fit
        # the line may reach 0 at the darkest bin (photon noise with no read noise): floor it at the
        # lowest variance measured, so the ratio stays a ratio of noise levels seen in the images
        floor = max((min(self.bin_std) / 255) ** 2, 1e-12)
        lo, hi = (max(a * x + b, floor) for x in (self.bin_intensity[0], self.bin_intensity[-1]))
        return math.sqrt(hi / lo)

    @property
    def signal_dependent(self) -> bool:
        """The std changes by more than ``SIGNAL_DEPENDENT`` times over the intensities, either way (camera
        pipelines' tone curves can make it fall with the signal)."""
        return not 1 / SIGNAL_DEPENDENT <= self.signal_ratio <= SIGNAL_DEPENDENT

    def to_dict(self) -> dict:
        return {**asdict(self), "rho1": self.rho1, "mean_std": self.mean_std, "correlated": self.correlated,
                "signal_ratio": self.signal_ratio, "signal_dependent": self.signal_dependent}


def _surface_residuals(blocks: np.ndarray) -> np.ndarray:
    """``blocks`` ``(N, B, B)`` minus each one's least-squares quadratic surface."""
    n = blocks.shape[-1]
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float64) - (n - 1) / 2) / n
    x, y = xx.ravel(), yy.ravel()
    design = np.stack([np.ones(n * n), x, y, x * x, x * y, y * y], 1)  # (B*B, SURFACE_TERMS)
    projector = design @ np.linalg.pinv(design)  # onto the surfaces
    flat = blocks.reshape(len(blocks), -1).astype(np.float64)
    return (flat - flat @ projector.T).reshape(blocks.shape)


def _blocks(image: np.ndarray) -> np.ndarray:
    """``image`` ``(C, H, W)`` cut into non-overlapping blocks ``(N, C, BLOCK, BLOCK)``."""
    c, h, w = image.shape
    rows, cols = h // BLOCK, w // BLOCK
    cut = image[:, : rows * BLOCK, : cols * BLOCK].reshape(c, rows, BLOCK, cols, BLOCK)
    return cut.transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, BLOCK, BLOCK)


def _lag_mean(r: np.ndarray, dy: int, dx: int, axis=None) -> np.ndarray:
    """The mean of ``r(p) r(p + (dy, dx))`` over the pairs the last two axes hold (over ``axis``; all by
    default): the one autocorrelation sum behind the diagnosis and the residual report."""
    h, w = r.shape[-2:]
    return (r[..., : h - dy, : w - dx] * r[..., dy:, dx:]).mean(axis=axis)


def _lag_sums(residuals: np.ndarray) -> np.ndarray:
    """``r(p) r(p + (dy, dx))`` over the blocks ``(N, B, B)``, for dy, dx in 0..MAX_LAG: the mean over the
    pairs of each block (every lag an average over the pairs it has), summed over the blocks."""
    return np.array([[len(residuals) * _lag_mean(residuals, dy, dx) for dx in range(MAX_LAG + 1)]
                     for dy in range(MAX_LAG + 1)])


def _white_rho() -> np.ndarray:
    """``rho(dy, dx)`` of white noise after the surface fit: the residual's covariance is ``I - P``."""
    n = BLOCK
    eye = np.eye(n * n)
    projector = eye - _surface_residuals(eye.reshape(n * n, n, n)).reshape(n * n, n * n)
    cov = (eye - projector).reshape(n, n, n, n)
    out = np.zeros((MAX_LAG + 1, MAX_LAG + 1))
    for dy in range(MAX_LAG + 1):
        for dx in range(MAX_LAG + 1):
            ii, jj = np.mgrid[0 : n - dy, 0 : n - dx]
            out[dy, dx] = cov[ii, jj, ii + dy, jj + dx].mean()
    return out / out[0, 0]


def _long_lag_correlation(residuals: np.ndarray) -> np.ndarray:
    """Per block ``(N, B, B)``: the mean autocorrelation along both axes at lags ``LONG_LAGS``."""
    r = residuals.astype(np.float64)
    power = (r**2).mean(axis=(1, 2)) + 1e-20
    rho = [_lag_mean(r, 0, d, axis=(1, 2)) + _lag_mean(r, d, 0, axis=(1, 2)) for d in LONG_LAGS]
    return np.mean(rho, axis=0) / (2 * power)


_WHITE_RHO = _white_rho()


def _flat_bins(mean: np.ndarray, var: np.ndarray, textured: np.ndarray) -> tuple[np.ndarray, list, list]:
    """The flattest blocks per intensity bin: their indices, and each bin's mean intensity and noise variance
    (the median of its picked blocks' variances over ``FLAT_BIAS``)."""
    order = np.argsort(mean, kind="stable")
    picked, bin_x, bin_var = [], [], []
    for part in np.array_split(order, min(BINS, len(order))):
        smooth = part[~textured[part]]
        part = smooth if len(smooth) >= max(4, len(part) // 8) else part
        keep = part[np.argsort(var[part], kind="stable")[: max(1, int(len(part) * FLAT_SHARE))]]
        picked.append(keep)
        bin_x.append(float(mean[keep].mean()))
        bin_var.append(float(np.median(var[keep])) / FLAT_BIAS)
    return np.concatenate(picked), bin_x, bin_var


def diagnose(images) -> Diagnosis:
    """Diagnose the noise of ``images``, arrays ``(C, H, W)`` in [0, 1] (at least one block each)."""
    means, variances, residuals, channels = [], [], [], []
    count = 0
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"expected images (C, H, W), got shape {image.shape}")
        blocks = _blocks(image)
        if not len(blocks):
            continue
        count += 1
        res = _surface_residuals(blocks.reshape(-1, BLOCK, BLOCK)).reshape(blocks.shape)
        dof = BLOCK * BLOCK - SURFACE_TERMS
        means.append(blocks.mean(axis=(2, 3)).reshape(-1))  # per block and channel
        variances.append(((res**2).sum(axis=(2, 3)) / dof).reshape(-1))
        residuals.append(res.reshape(-1, BLOCK, BLOCK).astype(np.float32))
        channels.append(np.tile(np.arange(image.shape[0]), len(blocks)))
    if not residuals:
        raise ValueError(f"no image holds a {BLOCK} x {BLOCK} block; the noise cannot be read from smaller images")
    mean, var, res = np.concatenate(means), np.concatenate(variances), np.concatenate(residuals)
    channel = np.concatenate(channels)

    # texture, unlike the noise, is still correlated at long lags: blocks whose residual is, are not flat
    textured = _long_lag_correlation(res) >= CORRELATED
    picked, bin_x, bin_var = _flat_bins(mean, var, textured)
    channel_std = []
    for c in np.unique(channel):
        own = channel == c
        channel_std.append(round(float(255 * np.sqrt(np.median(_flat_bins(mean[own], var[own], textured[own])[2]))), 3))

    sums = _lag_sums(res[picked])
    # less what removing the surfaces alone gives white noise (a small negative correlation at every lag)
    rho = sums / max(sums[0, 0], 1e-20) - _WHITE_RHO
    rho[0, 0] = 1.0
    length = 1
    for d in range(MAX_LAG, 0, -1):  # camera noise correlates neighbours positively
        if max(rho[0, d], rho[d, 0], rho[d, d]) >= CORRELATED:
            length = d + 1
            break

    x, v = np.array(bin_x), np.array(bin_var)
    if len(x) >= 2 and np.ptp(x) > 1e-6:
        a, b = np.polyfit(x, v, 1)
    else:
        a, b = 0.0, float(v.mean())
    return Diagnosis(
        images=count, blocks=len(picked), rho=rho.round(4).tolist(), correlation_length=length,
        std=float(255 * np.sqrt(np.median(v))), bin_intensity=[round(t, 4) for t in bin_x],
        bin_std=[round(float(255 * np.sqrt(t)), 3) for t in bin_var], fit=(float(a), float(b)),
        channel_std=channel_std,
    )


LEVEL_PIXELS = 1 << 22  # the central crop noise_level reads (per channel): enough flat blocks, bounded cost


def _image_diagnosis(image: np.ndarray) -> Diagnosis | None:
    """:func:`diagnose` of one image ``(C, H, W)``, read from a central crop of at most ``LEVEL_PIXELS`` pixels;
    None where the image holds fewer than ``FEW_BLOCKS`` blocks."""
    c, h, w = image.shape
    side = int(math.isqrt(LEVEL_PIXELS))
    ch, cw = min(h, max(side, LEVEL_PIXELS // max(w, 1))), min(w, max(side, LEVEL_PIXELS // max(h, 1)))
    top, left = (h - ch) // 2, (w - cw) // 2
    if (ch // BLOCK) * (cw // BLOCK) < FEW_BLOCKS:
        return None
    return diagnose([image[:, top:top + ch, left:left + cw]])


def channel_levels(image: np.ndarray) -> np.ndarray | None:
    """The noise std of each channel of one image ``(C, H, W)``, in [0, 1] units, ``(C,)``: each read as
    :func:`diagnose` reads it (the channel's flattest blocks; an upper bound on an image with little flat
    area), from a central crop of at most ``LEVEL_PIXELS`` pixels; None where the image holds fewer
    than ``FEW_BLOCKS`` blocks."""
    d = _image_diagnosis(image)
    return None if d is None else np.array(d.channel_std) / 255


def noise_level(image: np.ndarray) -> float | None:
    """The noise std of one image ``(C, H, W)`` in [0, 1], in [0, 1] units: the root mean square of its
    :func:`channel_levels` (the noise's mean variance, :attr:`Diagnosis.mean_std`); None where they
    cannot be read."""
    d = _image_diagnosis(image)
    return None if d is None else d.mean_std / 255


@dataclass
class Recommendation:
    """The ``dbsn train`` settings a diagnosis calls for, and why."""

    noise_model: str  # "awgn" or "hg"
    pd_stride: int  # pixel-shuffle stride in training (1: none)
    pd_stride_infer: int  # and at inference
    reasons: list[str]


def recommend(d: Diagnosis) -> Recommendation:
    """The noise heads and the pixel-shuffle strides for noise diagnosed as ``d``."""
    reasons = []
    if d.signal_dependent:
        noise_model = "hg"
        reasons.append(f"the noise std changes with the signal ({d.signal_ratio:.2f}x from the darkest to the "
                       f"brightest bin, outside 1/{SIGNAL_DEPENDENT:g}..{SIGNAL_DEPENDENT:g}): signal-dependent "
                       "heads (hg)")
    else:
        noise_model = "awgn"
        reasons.append(f"the noise std hardly depends on the signal ({d.signal_ratio:.2f}x from the darkest to "
                       f"the brightest bin, within 1/{SIGNAL_DEPENDENT:g}..{SIGNAL_DEPENDENT:g}): one level per "
                       "image (awgn)")
    if d.correlated:
        train = min(max(TRAIN_STRIDE, d.correlation_length + 1), MAX_STRIDE)
        infer = min(INFER_STRIDE, train)
        reasons.append(f"neighbouring pixels share noise (correlation {d.rho1:.2f} at lag 1, length "
                       f"{d.correlation_length}): pixel-shuffle stride {train} in training, {infer} at inference")
    else:
        train = infer = 1
        reasons.append(f"no spatial correlation (|rho| < {CORRELATED} from lag 1, {d.rho1:.2f} at lag 1): "
                       "the plain blind spot, no pixel shuffle")
    return Recommendation(noise_model, train, infer, reasons)


def describe(d: Diagnosis) -> str:
    """A few lines for the user: the measurements and the verdicts."""
    lags = ", ".join(f"{d.rho[0][k]:+.2f}" for k in range(1, MAX_LAG + 1))
    bins = ", ".join(f"{x:.2f}:{s:.1f}" for x, s in zip(d.bin_intensity, d.bin_std))
    few = f" (fewer than {FEW_BLOCKS}: the verdicts are uncertain; give more or larger images)" \
        if d.blocks < FEW_BLOCKS else ""
    return "\n".join([
        f"{d.images} images, {d.blocks} flat {BLOCK}x{BLOCK} blocks{few}",
        f"noise std {d.std:.2f} (0-255); per intensity bin (intensity:std) {bins}",
        f"per channel: std {', '.join(f'{s:.2f}' for s in d.channel_std)}",
        f"signal dependence: std x{d.signal_ratio:.2f} darkest to brightest -> "
        f"{'signal-dependent' if d.signal_dependent else 'flat'}",
        f"horizontal correlation at lags 1..{MAX_LAG}: {lags}",
        f"correlation length {d.correlation_length} -> {'correlated' if d.correlated else 'independent'} noise",
    ])



RESIDUAL_LAGS = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0))
STRUCTURE = 0.2  # correlation of the residual's local energy with the image's edges above which it holds detail


def _box(a: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean over ``k`` x ``k`` windows (same size, edges replicated) of ``a`` ``(H, W)``."""
    pad = np.pad(a, k // 2, mode="edge")
    c = np.cumsum(np.cumsum(np.pad(pad, ((1, 0), (1, 0))), 0), 1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def residual_report(y: np.ndarray, x_hat: np.ndarray) -> dict:
    """What the model took out of one image, for a user without a clean one: ``y - x_hat`` (``(C, H, W)``
    in [0, 1]) should look like the noise and like nothing else.

    - ``residual_std``: its std, 0-255 units (near the noise level where only noise was removed);
    - ``residual_rho``: its autocorrelation at small lags (about 0 for independent noise; where the
      noise is shared between neighbours, as much as the noise's own);
    - ``structure``: the correlation, over the image, between the residual's local energy and the
      gradient of ``x_hat`` (5 x 5 windows). Removed noise does not follow the edges; removed detail
      does. Above ``STRUCTURE`` the verdict says the model took detail out.
    """
    y, x_hat = np.asarray(y, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    r = y - x_hat
    r = r - r.mean(axis=(1, 2), keepdims=True)
    power = (r**2).mean()
    h, w = r.shape[1:]
    rho = {}
    for dy, dx in RESIDUAL_LAGS:
        if dy < h and dx < w:
            rho[f"{dy},{dx}"] = float(_lag_mean(r, dy, dx) / max(power, 1e-20))
    gray = x_hat.mean(0)
    gy, gx = np.gradient(gray) if min(h, w) > 1 else (np.zeros_like(gray), np.zeros_like(gray))
    edges, energy = _box(np.hypot(gy, gx)), _box((r**2).mean(0))
    structure = float(np.corrcoef(edges.ravel(), energy.ravel())[0, 1]) if edges.std() > 0 and energy.std() > 0 \
        else 0.0
    rho1 = 0.5 * (rho.get("0,1", 0.0) + rho.get("1,0", 0.0))
    verdict = ("the residual follows the image's edges: the model removed detail too" if structure > STRUCTURE
               else "the residual does not follow the edges: noise removed, detail kept")
    return {"residual_std": float(255 * np.sqrt(power)), "residual_rho": rho, "rho1": rho1,
            "structure": structure, "verdict": verdict}
