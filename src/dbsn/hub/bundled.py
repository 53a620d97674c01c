"""Models bundled with the package, loaded by name: ``dbsn.load("gray")``.

The weights are safetensors files in ``dbsn/weights/``. ``index.json`` there names
each model, its file and model card, what it was trained for, and the default
model for gray and for colour images::

    {"default": {"1": "gray", "3": "color"},
     "models": {"gray": {"file": "gray.safetensors", "card": "gray.md", "channels": 1,
                         "stage": "student", "noise": "awgn:5-50", "description": "..."}}}

Setting ``DBSN_WEIGHTS`` to a folder with the same layout replaces the bundled set
(a private model zoo, or tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..nn.registry import STAGE_OF_KIND

INDEX = "index.json"
STAGES = tuple(STAGE_OF_KIND.values())


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: Path
    card: Path | None
    channels: int
    stage: str
    noise: str
    description: str = ""
    teacher: str | None = None

    @property
    def available(self) -> bool:
        return self.file.is_file()


def weights_folder() -> Path:
    """The folder holding ``index.json`` and the bundled weights."""
    override = os.environ.get("DBSN_WEIGHTS")
    return Path(override) if override else Path(str(resources.files("dbsn") / "weights"))


def _index(folder: Path) -> dict:
    path = folder / INDEX
    if not path.is_file():
        return {"default": {}, "models": {}}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return {"default": index.get("default", {}), "models": index.get("models", {})}


def bundled_models(folder: str | os.PathLike | None = None) -> dict[str, BundledModel]:
    """Every model named in the index, whether or not its weights file is present."""
    folder = Path(folder) if folder is not None else weights_folder()
    models = {}
    for name, entry in _index(folder)["models"].items():
        stage = entry.get("stage", "")
        if stage not in STAGES:
            raise ValueError(f"{folder / INDEX}: model {name!r} has stage {stage!r}, expected one of {STAGES}")
        models[name] = BundledModel(
            name=name, file=folder / entry["file"], card=folder / entry["card"] if entry.get("card") else None,
            channels=int(entry["channels"]), stage=stage, noise=entry.get("noise", ""),
            description=entry.get("description", ""), teacher=entry.get("teacher"),
        )
    return models


def default_names(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"1": name, "3": name}``: the default bundled model per channel count (may be empty)."""
    return dict(_index(Path(folder) if folder is not None else weights_folder())["default"])


def default_model(channels: int, blind_spot: bool = False, folder: str | os.PathLike | None = None) -> str:
    """The name of the default bundled model for images with ``channels`` channels.

    With ``blind_spot``, the stage-1 model behind the default (its ``teacher``), which
    carries the noise estimator.
    """
    folder = Path(folder) if folder is not None else weights_folder()
    name = _index(folder)["default"].get(str(channels))
    kind = {1: "gray", 3: "colour"}.get(channels, f"{channels}-channel")
    if name is None:
        raise LookupError(f"no bundled default model for {kind} images; give --model CHECKPOINT")
    if blind_spot:
        entry = bundled_models(folder).get(name)
        if entry is not None and entry.stage == "student":
            if not entry.teacher:
                raise LookupError(f"the default {kind} model {name!r} names no stage-1 model")
            name = entry.teacher
    return name


def resolve_model(name_or_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """A checkpoint path as given, or the weights file of a bundled model name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    models = bundled_models(folder)
    name = str(name_or_path)
    if name in models:
        if not models[name].available:
            raise FileNotFoundError(f"bundled model {name!r}: its weights file {models[name].file} is missing")
        return models[name].file
    if path.suffix in (".pt", ".safetensors") or os.sep in name or "/" in name:
        raise FileNotFoundError(f"model file {name!r} does not exist")
    known = ", ".join(sorted(models)) or "none yet"
    raise ValueError(f"unknown model {name!r}: give a checkpoint file or a bundled name ({known})")
