"""Denoising with a trained model, on arrays and on files, and the evaluation protocol."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .data import seeded_generator
from .data.io import (IMAGE_SUFFIXES, FileIndex, ImageReadError, list_images, noise_map_layout, output_suffix,
                      read_image, read_planes, remove_stale_temporaries, write_image)
from .metrics import psnr, ssim
from .nn.registry import model_kind
from .nn.stage1 import std_n_map
from .noise import parse_noise
from .pretrained import default_model, resolve_model
from .runtime import (autocast, check_ensemble, is_out_of_memory, memory_format_for, resolve_device,
                      resolve_precision)
from .tiling import WINDOW_PIXELS, TileSpec, parse_memory, spec_for_precision, tiled_apply
from .train.checkpoint import load_model

log = logging.getLogger("dbsn")


class Denoiser:
    """A trained model ready to denoise (it takes the model over: masks are frozen for inference).

    >>> denoiser = dbsn.load("run/model.safetensors")
    >>> clean = denoiser.denoise(noisy)   # (H, W) or (H, W, C); uint8, uint16 or float in [0, 1]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "auto",
        gamma: float = 1.0,
        max_memory: int | str | None = None,
        precision: str = "auto",
        ensemble: int = 1,
    ):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.eval().to(self.device, memory_format=memory_format_for(self.device))
        for module in self.model.modules():  # inference only: mask the blind-spot weights once, not per call
            if hasattr(module, "freeze_mask"):
                module.freeze_mask()
        self.gamma = gamma
        self.max_memory = parse_memory(max_memory)
        # on a CPU, windows of at most WINDOW_PIXELS even where the budget holds more: they measured
        # faster per pixel (dbsn.tiling); None runs any image that fits the budget in one pass
        self.window_pixels = WINDOW_PIXELS if self.device.type == "cpu" else None
        # "auto": bf16 for a student on a device that computes it natively (within 0.01 dB of fp32,
        # benchmarks/colour_paths.py), fp32 for a stage-1 model (whose colour form loses 0.045 dB in bf16)
        self.precision = resolve_precision(precision, self.device, bf16_exact=not self.is_blind_spot)
        self.channels = int(model.config.get("in_channels", 1))
        self.ensemble = check_ensemble(ensemble)

    @property
    def config(self) -> dict:
        return dict(self.model.config)

    def tile_spec(self) -> TileSpec:
        """What tiling budgets for this model under this denoiser's precision."""
        return spec_for_precision(self.model.tile_spec(), self.precision)

    @property
    def is_blind_spot(self) -> bool:
        """True for a stage-1 model (``mu``, noise estimate and fusion), False for a student."""
        return model_kind(self.model.config["name"]) == "blind-spot"

    def predict(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``y`` ``(B, C, H, W)`` in [0, 1]; returns its outputs (``x_hat`` clamped to [0, 1]).

        Images larger than the memory budget go through the model tile by tile
        (:mod:`dbsn.tiling`), with the same result as one pass. With ``ensemble`` n > 1 each
        output is the mean over n mirrored and rotated copies of ``y``, each turned back.
        """
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ValueError(f"expected a tensor (B, {self.channels}, H, W), got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError(f"the image holds {int((~torch.isfinite(y)).sum())} NaN or infinite pixels; "
                             "replace them before denoising")
        with torch.inference_mode():
            y = y.to(self.device, torch.float32)
            out = {}
            for turns, flip in ENSEMBLE_TRANSFORMS[:self.ensemble]:
                for k, v in self._one_pass(_transform(y, turns, flip)).items():
                    v = _untransform(v, turns, flip) if v.dim() >= 4 else v
                    out[k] = out[k] + v if k in out else v
        out = {k: (v / self.ensemble).cpu() for k, v in out.items()}
        if not torch.isfinite(out["x_hat"]).all():  # never hand on (or write) a wrong image
            raise FloatingPointError("the model gave NaN or infinite values on this image; its weights may be "
                                     "broken (retrain, or try --precision fp32)")
        return out

    def _one_pass(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's outputs on ``y`` (``x_hat`` clamped), tile by tile when it exceeds the memory budget."""
        y = y.contiguous(memory_format=memory_format_for(self.device))
        spec = self.tile_spec()
        if self.is_blind_spot:
            # the D-BSN under the chosen precision, its heads in fp32 (as trained)
            parts = tiled_apply(partial(self.model.pixel_parts, precision=self.precision), y, spec, self.max_memory,
                                self.window_pixels)
            out = self.model.assemble(y, parts, gamma=self.gamma)  # averages and fusion in fp32
        else:
            out = tiled_apply(self._student, y, spec, self.max_memory, self.window_pixels)
        out = {k: v.float() for k, v in out.items()}
        out["x_hat"] = out["x_hat"].clamp(0, 1)
        return out

    def _student(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student on ``y`` under this denoiser's precision, with fp32 outputs."""
        with autocast(self.precision, self.device):
            out = self.model(y)
        return {k: v.float() for k, v in out.items()}

    def denoise(self, image: np.ndarray, return_std_n: bool = False):
        """Denoise one image array; the result has the input's shape and dtype.

        Args:
            image: ``(H, W)`` or ``(H, W, C)``, uint8, uint16, or float in [0, 1].
            return_std_n: also return the estimated noise std map ``(H, W)`` in 0-255 units.
        """
        array = np.asarray(image)
        if array.ndim not in (2, 3):
            raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {array.shape}")
        if array.dtype == np.uint8:
            scale = 255.0
        elif array.dtype == np.uint16:
            scale = 65535.0
        elif np.issubdtype(array.dtype, np.floating):
            scale = 1.0
        else:
            raise TypeError(f"expected uint8, uint16 or float pixels, got {array.dtype}")
        chw = array.astype(np.float32)[None] / scale if array.ndim == 2 else np.moveaxis(array, -1, 0) / scale
        chw = _match_channels(chw.astype(np.float32), self.channels, "the image")
        out = self.predict(torch.from_numpy(chw)[None])
        x_hat = out["x_hat"][0].numpy()
        if array.ndim == 3 and array.shape[-1] != x_hat.shape[0]:
            x_hat = np.repeat(x_hat, array.shape[-1], axis=0)
        result = x_hat[0] if array.ndim == 2 else np.moveaxis(x_hat, 0, -1)
        if scale != 1.0:
            result = np.round(result * scale).astype(array.dtype)
        else:
            result = result.astype(array.dtype if array.dtype != np.float16 else np.float32)
        if return_std_n:
            if "var_n" not in out:
                raise ValueError("return_std_n needs a stage-1 model (it carries the noise estimator)")
            return result, std_n_map(out)[0].numpy()
        return result


# (quarter turns, mirrored) in the order ``ensemble`` takes them: 2 adds the mirror image, 4 the
# half turn of both, 8 the quarter turns (the whole symmetry group of the square)
ENSEMBLE_TRANSFORMS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def _transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``x`` mirrored left-right (when ``flip``), then turned ``turns`` quarter turns, over its last two axes."""
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, (-2, -1)) if turns else x


def _untransform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`_transform`."""
    x = torch.rot90(x, -turns, (-2, -1)) if turns else x
    return x.flip(-1) if flip else x


def _match_channels(chw: np.ndarray, channels: int, what: str) -> np.ndarray:
    c = chw.shape[0]
    if c == channels:
        return chw
    if channels == 1 and c == 3 and np.array_equal(chw[0], chw[1]) and np.array_equal(chw[0], chw[2]):
        return chw[:1]  # gray stored as RGB
    kind = {1: "gray", 3: "colour"}
    raise ValueError(
        f"{what} is {kind.get(c, f'{c}-channel')} but the model is {kind.get(channels, channels)}; "
        f"use a {kind.get(c, '')} model"
    )


def load(
    model: str | os.PathLike,
    device: str = "auto",
    gamma: float = 1.0,
    max_memory: int | str | None = None,
    precision: str = "auto",
    ensemble: int = 1,
) -> Denoiser:
    """Load a checkpoint (``.pt``), a weights file (``.safetensors``) or a bundled model by name.

    ``ensemble`` (1, 2, 4 or 8) averages the outputs on that many mirrored and rotated copies
    of the input: slower by that factor, and usually a little better (about 0.1 dB with 8).
    ``precision`` ``"auto"`` runs a student in bf16 where the device computes bf16 natively
    (2.9 times faster for the colour default on such a CPU, within 0.01 dB) and everything else
    in fp32; ``"fp32"`` gives the same result on every machine to about 1e-6.

    >>> dbsn.load("run/model.safetensors")   # a model you trained
    >>> dbsn.load("gray")                     # a bundled model (``dbsn list``)
    """
    return Denoiser(load_model(resolve_model(model)), device=device, gamma=gamma, max_memory=max_memory,
                    precision=precision, ensemble=ensemble)


@dataclass
class FileResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and the images inside given folders; raises if that is no file at all."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                log.warning("no images in %s (looked for %s files)", p, ", ".join(IMAGE_SUFFIXES))
            paths.extend(found)
        else:
            paths.append(p)
    unique: dict[Path, Path] = {}  # a file named twice (or through a link) is denoised once
    for p in paths:
        unique.setdefault(p.resolve() if p.exists() else p, p)
    paths = list(unique.values())
    if not paths:
        raise ValueError(f"no images in {', '.join(repr(str(i)) for i in inputs)} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)} files); give image files or folders holding them")
    return paths


def output_names(paths: list[Path], suffix_of=output_suffix) -> list[str]:
    """The output file name of each input: its stem and :func:`output_suffix`, made distinct.

    Inputs whose stems clash (compared case-folded, as macOS and Windows do; the stem, so that
    their noise maps do not clash either) are told apart by what differs among them:
    ``pic_png.png`` and ``pic_jpg.png`` for ``pic.png`` and ``pic.jpg``; ``a_x.png`` and
    ``b_x.png`` for ``a/x.png`` and ``b/x.png``; else ``x_1.png``, ``x_2.png``, ... in the order given.
    """
    names = [p.stem + suffix_of(p) for p in paths]
    for _ in range(len(paths) + 1):
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(Path(name).stem.casefold(), []).append(i)
        clashes = [members for members in groups.values() if len(members) > 1]
        if not clashes:
            return names
        for members in clashes:
            stems = [Path(names[i]).stem for i in members]
            exts = [paths[i].suffix.lower().lstrip(".") for i in members]
            parents = [paths[i].resolve().parent.name for i in members]
            if len({e.casefold() for e in exts}) == len(members):
                tags = [f"{stem}_{ext}" for stem, ext in zip(stems, exts)]
            elif len({d.casefold() for d in parents}) == len(members) and all(parents):
                tags = [f"{parent}_{stem}" for parent, stem in zip(parents, stems)]
            else:
                tags = [f"{stem}_{k}" for k, stem in enumerate(stems, 1)]
            for i, tag in zip(members, tags):
                names[i] = tag + Path(names[i]).suffix
    raise AssertionError("output names did not become distinct")  # each round makes every clash distinct


@dataclass
class Target:
    """Where the results of one input go."""

    source: Path
    image: Path
    noise_map: Path | None = None


def plan_outputs(paths: list[Path], out_dir: str | os.PathLike, noise_map: bool = False, overwrite: bool = False,
                 suffix_of=output_suffix) -> list[Target]:
    """Every output path of a call, decided and checked before any work.

    Raises:
        FileExistsError: when an output would land on an input (never allowed), on a file that
            exists (unless ``overwrite``), or on another output of the same call; or when
            ``out_dir`` is a file. Nothing has been written then.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"-o {out_dir} is an existing file; expected an output folder (new or existing)")
    names = output_names(paths, suffix_of)
    targets = [Target(p, out_dir / name, out_dir / (Path(name).stem + "_std_n.tiff") if noise_map else None)
               for p, name in zip(paths, names)]
    outputs = [t for target in targets for t in (target.image, target.noise_map) if t is not None]
    seen: dict[str, Path] = {}
    for out in outputs:
        if out.name.casefold() in seen:
            raise FileExistsError(f"two outputs of this call would both be {out} (and {seen[out.name.casefold()]}); "
                                  "rename one of the inputs or denoise them in two calls")
        seen[out.name.casefold()] = out
    inputs = FileIndex(paths)
    for out in outputs:
        p = inputs.find(out)
        if p is not None:
            raise FileExistsError(f"the output {out} would replace the input {p}; choose another output folder "
                                  "(an input is never overwritten, even with --overwrite)")
    occupied = [out for out in outputs if out.exists() or out.is_symlink()]
    if occupied and (not overwrite or any(not out.is_file() or out.is_symlink() for out in occupied)):
        more = f" and {len(occupied) - 1} more" if len(occupied) > 1 else ""
        fix = ("it is not a plain file; remove it or choose another -o" if overwrite else
               "pass --overwrite to replace earlier outputs, or choose another -o")
        raise FileExistsError(f"the output {occupied[0]}{more} already exists; {fix}")
    for out in outputs:  # what a killed run of the same call left half-written
        remove_stale_temporaries(out)
    return targets


class DefaultDenoisers:
    """The bundled default model for each channel count, loaded on first use."""

    def __init__(self, blind_spot: bool = False, **load_options):
        self.blind_spot, self.load_options, self._loaded = blind_spot, load_options, {}

    def __call__(self, channels: int) -> Denoiser:
        if channels not in self._loaded:
            name = default_model(channels, blind_spot=self.blind_spot)
            log.info("using the bundled model %r for %d-channel images", name, channels)
            self._loaded[channels] = load(name, **self.load_options)
        return self._loaded[channels]


def denoise_files(
    denoiser: Denoiser | DefaultDenoisers | None,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    noise_map: bool = False,
    progress_bar: bool = False,
    overwrite: bool = False,
    max_pixels: int | None = None,
) -> FileResult:
    """Denoise image files into ``out_dir``, keeping what each file had (see :mod:`dbsn.data.io`).

    ``denoiser=None`` picks, for each file, the bundled default model that matches its
    channels (gray or colour); with ``noise_map``, the stage-1 model behind that default.
    Every plane of a TIFF stack is denoised and the stack is written back with its axes.

    Every output path is decided and checked first (:func:`plan_outputs`): an output never
    replaces an input, nor a file this call did not write unless ``overwrite``. A file that
    cannot be read or denoised is logged and skipped; the others go on.
    With ``noise_map``, ``<name>_std_n.tiff`` holds the estimated noise std (0-255 units, float32).
    """
    from tqdm import tqdm

    if denoiser is None:
        denoiser = DefaultDenoisers(blind_spot=noise_map)
    if isinstance(denoiser, Denoiser):
        if noise_map and not denoiser.is_blind_spot:
            raise ValueError("--noise-map needs a stage-1 model (it carries the noise estimator); this one is a student")
        model_for = lambda channels: denoiser  # noqa: E731
    else:
        model_for = denoiser
    targets = plan_outputs(collect_inputs(inputs), out_dir, noise_map=noise_map, overwrite=overwrite)
    result = FileResult()
    for target in tqdm(targets, disable=not progress_bar, unit="img"):
        path, model = target.source, None
        try:
            planes, info = read_planes(path, max_pixels=max_pixels)
            model = model_for(planes.shape[1])
            if noise_map and not model.is_blind_spot:
                raise ValueError(f"{path}: --noise-map needs a stage-1 model (it carries the noise estimator)")
            x_hat, std_n = [], []
            for plane in planes:
                chw = _match_channels(plane, model.channels, str(path))
                out = model.predict(torch.from_numpy(chw)[None])
                x = out["x_hat"][0].numpy()
                x_hat.append(np.repeat(x, plane.shape[0], axis=0) if x.shape[0] != plane.shape[0] else x)
                if noise_map:
                    std_n.append(std_n_map(out).numpy())
            result.written.append(write_image(target.image, np.stack(x_hat), like=info))
            if noise_map:
                write_image(target.noise_map, np.stack(std_n), like=noise_map_layout(info))
                result.written.append(target.noise_map)
        except Exception as err:  # noqa: BLE001  one bad file must not end a batch; each is reported
            if is_out_of_memory(err):
                now = f" (now {model.max_memory / 2**30:.3g}G)" if model is not None else ""
                message = (f"{path}: out of memory while denoising it; lower --max-memory{now} so that it goes "
                           "through the model in smaller tiles")
            elif isinstance(err, (ImageReadError, ValueError, OSError, RuntimeError, LookupError)):
                message = str(err) if str(path) in str(err) else f"{path}: {err}"
            else:
                raise
            log.error("skipped: %s", message)
            result.failed.append((path, message))
    return result


def add_noise_files(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    noise_spec: str,
    seed: int = 0,
    channels: int | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
) -> FileResult:
    """Write a noisy version of each image to ``out_dir`` as float32 TIFF, neither clipped nor quantised.

    Image ``i`` (in sorted order) draws its noise from a generator seeded with ``seed + i``,
    so a folder is reproducible as a whole; the planes of a stack draw from it in turn and
    are written back as a float32 stack with the input's axes. Unreadable files are logged and skipped;
    outputs are checked as :func:`denoise_files` does (inputs are never overwritten).
    """
    noise = parse_noise(noise_spec)
    targets = plan_outputs(collect_inputs(inputs), out_dir, overwrite=overwrite, suffix_of=lambda p: ".tiff")
    result = FileResult()
    for i, target in enumerate(targets):
        try:
            planes, info = read_planes(target.source, channels=channels, max_pixels=max_pixels)
            generator = seeded_generator(seed + i)
            y = np.stack([noise.add(torch.from_numpy(x), generator).numpy() for x in planes])
            like = replace(info, bits=32, dtype="float32", alpha=None, icc=None, exif=None,
                           channels=planes.shape[1]) if info.is_stack else None
            result.written.append(write_image(target.image, y if like else y[0], bits=32, like=like))
        except (ImageReadError, ValueError, OSError) as err:
            log.error("skipped: %s", err)
            result.failed.append((target.source, str(err)))
    return result


def evaluate(
    denoiser: Denoiser,
    clean_dir: str | os.PathLike,
    noise_spec: str,
    seed: int = 0,
    progress_bar: bool = False,
    channels: int | None = None,
    max_pixels: int | None = None,
) -> dict:
    """The paper's evaluation protocol (METHOD.md section 5) on a folder of clean images.

    An image whose channels differ from the model's is skipped and reported, as
    :func:`denoise_files` does, unless ``channels`` (1 or 3) asks to convert every image.

    For every image: ``numpy.random.seed(seed)``, noise added to the float32 image,
    the noisy image neither clipped nor quantised, the output clamped to [0, 1], and
    PSNR on floats with data range 1 (SSIM likewise), averaged over images.
    """
    from tqdm import tqdm

    noise = parse_noise(noise_spec)
    if getattr(noise, "std_max", None) is not None:
        raise ValueError(f"evaluation needs one noise level, not a range: got {noise_spec!r}")
    paths = list_images(clean_dir)
    if not paths:
        raise ValueError(f"no images in {str(clean_dir)!r}")
    rows, skipped = [], []
    for path in tqdm(paths, disable=not progress_bar, unit="img"):
        try:
            x, _ = read_image(path, channels=channels, max_pixels=max_pixels)
            x = torch.from_numpy(_match_channels(x, denoiser.channels, str(path)))
        except ValueError as err:  # ImageReadError too
            log.error("skipped: %s", err)
            skipped.append(str(path))
            continue
        y = noise.add_protocol(x, seed=seed)
        start = time.perf_counter()
        out = denoiser.predict(y[None])
        seconds = time.perf_counter() - start
        row = {
            "image": path.name,
            "psnr_noisy": psnr(y, x),
            "psnr_mu": psnr(out["mu"][0].clamp(0, 1), x) if "mu" in out else None,
            "psnr": psnr(out["x_hat"][0], x),
            "ssim": ssim(out["x_hat"][0], x),
            "noise_std_est": std_n_map(out).mean().item() if "var_n" in out else None,
            "seconds": seconds,
        }
        rows.append(row)
    if not rows:
        raise ValueError(f"no readable images in {str(clean_dir)!r}")

    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "protocol": f"seed {seed} per image, noise {noise.spec}, noisy input not clipped or quantised, "
        "output clamped to [0, 1], float PSNR/SSIM with data range 1, mean over images",
        "noise": noise.spec,
        "clean": str(clean_dir),
        "model": denoiser.config,
        "n_images": len(rows),
        "skipped": skipped,
        "psnr_noisy": mean("psnr_noisy"),
        "psnr_mu": mean("psnr_mu"),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "noise_std_est": mean("noise_std_est"),
        "seconds_per_image_median": float(np.median([r["seconds"] for r in rows])),
        "images": rows,
    }


def format_table(result: dict) -> str:
    """One line per image and the mean, as ``dbsn evaluate`` prints it."""

    def cell(v, fmt):
        return format(v, fmt) if v is not None else "-"

    header = f"{'image':<24} {'noisy':>7} {'mu':>7} {'x_hat':>7} {'ssim':>6} {'std_n':>6}"
    lines = [header, "-" * len(header)]
    for r in result["images"] + [{"image": "mean", **{k: result[k] for k in
                                   ("psnr_noisy", "psnr_mu", "psnr", "ssim", "noise_std_est")}}]:
        if r["image"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{r['image'][:24]:<24} {cell(r['psnr_noisy'], '7.2f')} {cell(r['psnr_mu'], '7.2f')} "
            f"{cell(r['psnr'], '7.2f')} {cell(r['ssim'], '6.4f')} {cell(r['noise_std_est'], '6.2f')}"
        )
    return "\n".join(lines)
