"""Denoising and adding noise to image files: inputs collected, every output path planned and checked
before any work, each file read, denoised and written back like the input; a bad file skipped."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data import seeded_generator
from .data.io import (IMAGE_SUFFIXES, FileIndex, ImageReadError, list_images, noise_map_layout, output_suffix,
                      read_planes, remove_stale_temporaries, write_image)
from .denoiser import Denoiser, load, match_channels
from .hub import default_model
from .nn.blind_spot import std_n_map
from .noise import parse_noise
from .runtime import is_out_of_memory

log = logging.getLogger("dbsn")


@dataclass
class FileResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)  # denoise_files(report=True): one per image


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
    report: bool = False,
) -> FileResult:
    """Denoise image files into ``out_dir``, keeping what each file had (see :mod:`dbsn.data.io`).

    ``denoiser=None`` picks, for each file, the bundled default model that matches its
    channels (gray or colour); with ``noise_map``, the stage-1 model behind that default.
    Every plane of a TIFF stack is denoised and the stack is written back with its axes.

    Every output path is decided and checked first (:func:`plan_outputs`): an output never
    replaces an input, nor a file this call did not write unless ``overwrite``. A file that
    cannot be read or denoised is logged and skipped; the others go on.
    With ``noise_map``, ``<name>_std_n.tiff`` holds the estimated noise std (0-255 units, float32).
    With ``report``, ``result.reports`` gets, per image (its first plane), what the model took out
    (:func:`dbsn.noise.diagnosis.residual_report`) and, for a stage-1 model, its noise estimate.
    """
    from .noise.diagnosis import residual_report
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
                chw = match_channels(plane, model.channels, str(path))
                out = model.predict(torch.from_numpy(chw)[None])
                x = out["x_hat"][0].numpy()
                x_hat.append(np.repeat(x, plane.shape[0], axis=0) if x.shape[0] != plane.shape[0] else x)
                if noise_map or (report and model.is_blind_spot and not std_n):
                    std_n.append(std_n_map(out).numpy())
                if report and len(x_hat) == 1:
                    entry = {"image": str(path), **residual_report(plane, x_hat[0])}
                    if std_n:
                        entry["noise_std_est"] = float(std_n[0].mean())
                    result.reports.append(entry)
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


def diagnose_files(paths: list[Path], channels: int | None = None, max_pixels: int | None = None):
    """The noise diagnosis (:func:`dbsn.noise.diagnosis.diagnose`) of image files, every plane of a stack an
    image; returns it and the files that could not be read, with the reason (skipped; the rest counts)."""
    from .noise.diagnosis import diagnose

    skipped: list[tuple[str, str]] = []

    def images():
        for path in paths:
            try:
                planes, _ = read_planes(path, channels, max_pixels)
            except ImageReadError as err:
                skipped.append((str(path), str(err)))
                continue
            yield from planes

    return diagnose(images()), skipped
