"""Packaging a trained model to share: its weights in the smallest storage that keeps its PSNR, a model
card, and an entry in a model folder's ``index.json``, in the layout of the bundled models
(``DBSN_WEIGHTS=FOLDER`` then serves it by name: ``dbsn.load(NAME)``, ``dbsn list``).

    dbsn bundle runs/my-model -o my-models --name microscope --description "..." \\
        --check held-out-clean/ --noise awgn:25
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.io import atomic_path
from .denoiser import load
from .evaluation import evaluate
from .hub import load_model, read_checkpoint, save_weights
from .hub.bundled import INDEX, BundledModel, bundled_models
from .nn.registry import STAGE_OF_KIND, model_kind

log = logging.getLogger("dbsn")

# storages, smallest first: int8 (weights of INT8_FROM elements or more, the rest fp16), fp16, fp32
STORAGES = ("int8", "fp16", "fp32")
INT8_FROM = 2 ** 19
STORAGE_TEXT = {
    "int8": (f"fp16 safetensors, except the weights of {INT8_FROM:,} elements or more: int8 with an fp16 scale "
             "per kernel (read back to fp32 on loading)."),
    "fp16": "fp16 safetensors.",
    "fp32": "fp32 safetensors.",
}
MAX_LOSS_DB = 0.01  # the most PSNR a smaller storage may cost on the check images


def save_in_storage(source: str | os.PathLike, out: str | os.PathLike, storage: str) -> Path:
    """The weights of the model in ``source`` written to ``out`` (safetensors) in one of :data:`STORAGES`."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    model = load_model(source)
    return save_weights(out, model if storage == "fp32" else model.half(),
                        int8_from=INT8_FROM if storage == "int8" else None)


def same_weights(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two safetensors files hold equal tensors (their bytes may differ)."""
    from safetensors.torch import load_file

    if not Path(b).is_file():
        return False
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


@dataclass
class StorageChoice:
    storage: str
    psnr_fp32: float | None  # on the check images; None without them
    psnr_stored: float | None


def choose_storage(source: str | os.PathLike, out: str | os.PathLike, check: str | os.PathLike | None = None,
                   noise: str | None = None, storage: str = "auto") -> StorageChoice:
    """Write ``source``'s weights to ``out``: in ``storage``, or (``"auto"``) in the smallest of
    :data:`STORAGES` whose PSNR on the clean images ``check`` with ``noise`` (the evaluation protocol, fp32)
    costs at most :data:`MAX_LOSS_DB` against the fp32 weights'. Without check images ``"auto"`` keeps fp32."""
    if storage == "auto" and check is None:
        storage = "fp32"
    if storage != "auto":
        save_in_storage(source, out, storage)
        return StorageChoice(storage, None, None)
    if noise is None:
        raise ValueError("--check needs --noise SPEC: the noise the check images get, e.g. awgn:25")

    def score(path) -> float:
        return evaluate(load(path, device="cpu", precision="fp32"), check, noise)["psnr"]

    fp32 = score(source)
    with tempfile.TemporaryDirectory(prefix="dbsn-bundle-") as scratch:
        for storage in STORAGES:
            candidate = Path(scratch) / "candidate.safetensors"
            save_in_storage(source, candidate, storage)
            stored = fp32 if storage == "fp32" else score(candidate)
            if fp32 - stored <= MAX_LOSS_DB:  # a cost; a smaller storage that scores higher is kept too
                break
        with atomic_path(out) as tmp:
            tmp.write_bytes(candidate.read_bytes())
    return StorageChoice(storage, fp32, stored)


def update_index(folder: str | os.PathLike, name: str, entry: dict, default_for: int | None = None) -> Path:
    """Add or replace ``name`` in ``folder/index.json`` (written atomically; created when missing)."""
    path = Path(folder) / INDEX
    index = {"default": {}, "models": {}}
    if path.is_file():
        try:
            index = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); repair or remove it") from None
    index.setdefault("default", {})
    index.setdefault("models", {})[name] = entry
    if default_for is not None:
        index["default"][str(default_for)] = name
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")
    return path


def run_command(options: dict, command: str, run_dir: Path) -> str:
    """The command line that trains a run with these options (as ``run.json`` stores them)."""
    from dataclasses import fields

    from .options import default_of, flag_of

    if command == "train":
        from .train.stage1 import TrainOptions as cls
    else:
        from .train.distill import DistillOptions as cls
    defaults = {f.name: default_of(f) for f in fields(cls)}
    words = ["dbsn", command]
    for f in fields(cls):
        value = options.get(f.name)
        if value is None or value == defaults[f.name] or (isinstance(value, list) and tuple(value) == defaults[f.name]):
            continue
        if not f.metadata.get("cli", True):
            words.append(f"[{f.name}={json.dumps(value)}]")
            continue
        if isinstance(value, bool):
            words.append(flag_of(f.name))
        elif isinstance(value, (list, tuple)) and f.metadata.get("parse") is not None:
            words += [flag_of(f.name), ",".join(f"{v:g}" for v in value)]
        elif isinstance(value, (list, tuple)):
            words += [flag_of(f.name), *map(str, value)]
        else:
            words += [flag_of(f.name), str(value)]
    return shlex.join(words + ["-o", str(run_dir)])


def _teacher_noise(teacher: str, bundled: BundledModel | None) -> str:
    """The noise a student's teacher was trained on (a student's own run does not name one): the entry of
    ``bundled``, the teacher bundled beside it, or the ``run.json`` beside the weights ``teacher``; "" when
    neither says."""
    if bundled is not None:
        return bundled.noise
    if not teacher:
        return ""
    summary = Path(teacher).parent / "run.json"
    try:
        teacher_options = json.loads(summary.read_text()).get("options", {})
    except (OSError, json.JSONDecodeError):
        return ""
    return teacher_options.get("noise") or ("real noise" if teacher_options.get("noisy") else "")


def bundle_run(run_dir: str | os.PathLike, folder: str | os.PathLike, name: str, description: str = "",
               check: str | os.PathLike | None = None, noise: str | None = None, storage: str = "auto",
               default: bool = False, overwrite: bool = False) -> dict:
    """Package the finished run in ``run_dir`` (``model.safetensors`` and ``run.json``) into ``folder`` as
    ``name``: weights (:func:`choose_storage`), a card ``name.md`` and its ``index.json`` entry."""
    run_dir, folder = Path(run_dir), Path(folder)
    weights, summary_path = run_dir / "model.safetensors", run_dir / "run.json"
    for path in (weights, summary_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: bundle takes the folder of a finished `dbsn train` or "
                                    "`dbsn distill` run")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"--name must be a plain model name such as my-model, got {name!r}")
    out, card_path = folder / f"{name}.safetensors", folder / f"{name}.md"
    for path in (out, card_path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it, or choose another --name")
    summary = json.loads(summary_path.read_text())
    config = read_checkpoint(weights)["config"]
    kind = model_kind(config["name"])
    stage = STAGE_OF_KIND[kind]
    channels = int(config.get("in_channels", 1))
    options = summary.get("options", {})
    folder.mkdir(parents=True, exist_ok=True)
    choice = choose_storage(weights, out, check, noise, storage)
    command = "train" if kind == "blind-spot" else "distill"
    teacher = str(options.get("teacher") or "")
    bundled_teacher = bundled_models(folder).get(teacher) if kind == "student" else None  # the stage-1 model, by name
    trained_noise = options.get("noise") or ("real noise" if kind == "blind-spot"
                                             else _teacher_noise(teacher, bundled_teacher))
    last = summary.get("last_validation", {})
    check_text = ("" if choice.psnr_fp32 is None else
                  f" On the check images {check} at `{noise}`: PSNR {choice.psnr_fp32:.3f} dB with the fp32 weights, "
                  f"{choice.psnr_stored:.3f} dB as stored (the smallest storage that costs at most {MAX_LOSS_DB} dB is kept).")
    card = f"""# {name}

{description or f"A {'stage-1' if stage == 'stage1' else 'student'} model ({config['name']})"}.

## How it was trained

    {run_command(options, command, run_dir)}

- Model: `{json.dumps(config)}`.
- Steps and wall time: {summary.get("steps")} steps, {summary.get("elapsed_s", 0) / 60:.0f} min on {summary.get("device", "?")}.
- Last validation: {", ".join(f"{k} {v:.3f}" for k, v in last.items()) or "none"}.

## Storage
{STORAGE_TEXT[choice.storage]}{check_text}
"""
    with atomic_path(card_path) as tmp:
        tmp.write_text(card)
    entry = {"file": out.name, "card": card_path.name, "channels": channels, "stage": stage, "noise": trained_noise,
             "description": description}
    if bundled_teacher is not None:
        entry["teacher"] = teacher
    index = update_index(folder, name, entry, default_for=channels if default else None)
    log.info("bundled %s as %s (%s) in %s", run_dir, name, choice.storage, folder)
    return {"weights": str(out), "card": str(card_path), "index": str(index), "storage": choice.storage,
            "psnr_fp32": choice.psnr_fp32, "psnr_stored": choice.psnr_stored}
