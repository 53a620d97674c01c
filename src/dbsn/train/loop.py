"""One plain training loop shared by every training task.

A task owns its model, optimizer and data; the loop owns the budget (steps or
minutes), the progress bar, the CSV log, validation, checkpoints and resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from ..data import BatchStream
from ..data.io import atomic_path, remove_stale_temporaries
from ..data.patches import MAX_PATCH, MIN_SIDE
from ..distributed import Context, parameter_checksum
from ..runtime import is_out_of_memory
from .checkpoint import read_checkpoint, save_checkpoint, save_weights
from .ema import EMA

log = logging.getLogger("dbsn")


class Task(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    stream: BatchStream  # the training batches, drawn from ``generator`` or by worker processes
    log_fields: list[str]

    def step(self, progress: float) -> dict:
        """One optimisation step at ``progress`` (0 to 1); returns ``{"loss", "phase", "lr", ...}``."""

    def validate(self) -> dict:
        """Validation metrics (floats)."""


def cosine(q: float, floor: float = 0.05) -> float:
    """Learning-rate factor: from 1 at ``q = 0`` down to ``floor`` at ``q = 1``."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * q))


def check_number(option: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Refuse a ``value`` that is not a finite number (``integer``: a whole one) in its range.

    The command line's types check the same; this is for callers of the library, whose
    options reach the loop without them.
    """
    kind = "a whole number" if integer else "a finite number"
    bounds = []
    if low is not None:
        bounds.append(f"above {low:g}" if low_open else f"at least {low:g}")
    if high is not None:
        bounds.append(f"below {high:g}" if high_open else f"at most {high:g}")
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    fits = is_number and math.isfinite(value) and (not integer or float(value).is_integer())
    if fits and low is not None:
        fits = value > low if low_open else value >= low
    if fits and high is not None:
        fits = value < high if high_open else value <= high
    if not fits:
        expected = " ".join([kind, " and ".join(bounds)]).strip()
        raise ValueError(f"{option} expects {expected}, got {value!r}")


def check_budget(steps: int | None, minutes: float | None) -> None:
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one budget: --steps N or --minutes M")
    if steps is not None:
        check_number("--steps", steps, 1, integer=True)
    else:
        check_number("--minutes", minutes, 0, low_open=True)


def check_ema(decay: float) -> None:
    if not (isinstance(decay, numbers.Real) and 0.0 <= decay < 1.0):  # NaN fails the comparison too
        raise ValueError(f"--ema takes a decay in [0, 1) (0: off, e.g. 0.995), got {decay}")


def check_common(options) -> None:
    """The numeric options every training task has: sizes, rates, seed and the logging intervals."""
    check_number("--batch-size", options.batch_size, 1, integer=True)
    check_number("--patch-size", options.patch_size, MIN_SIDE, MAX_PATCH, integer=True)
    check_number("--lr", options.lr, 0)
    check_number("--seed", options.seed, 0, integer=True)
    check_number("--val-every", options.val_every, 1, integer=True)
    check_number("--save-every", options.save_every, 1, integer=True)
    check_number("val_patches", options.val_patches, 1, integer=True)
    check_number("--workers", options.workers, 0, integer=True)


RUN_FILES = ("checkpoint.pt", "model.safetensors", "log.csv", "run.json")  # what a run writes into its folder


def prepare_run(out_dir: str, resume: bool, ctx: Context = Context(), options=None,
                overwrite: bool = False) -> dict | None:
    """Check the run folder; return the checkpoint to resume from, or None for a new run.

    A new run refuses a folder that holds any of :data:`RUN_FILES` unless ``overwrite``,
    which removes them. A resume refuses a run that has already spent the budget of
    ``options`` (the stored one, or a new ``--steps``/``--minutes``), before any file changes.
    Both remove what a killed write left behind (:func:`dbsn.data.io.atomic_path`'s
    temporaries of the run files). Every rank checks the same folder; all of them pass
    the barrier before any writes.
    """
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    state = None
    if resume and overwrite:
        raise ValueError("--resume continues the run in -o and --overwrite replaces it; give one of them")
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        state = read_checkpoint(ckpt)
        if options is not None and _finished(out, state, options):
            done = (f"{int(state['step'])} of {options.steps} steps" if options.steps is not None
                    else f"{float(state['elapsed_s']) / 60:.1f} of {options.minutes:g} minutes")
            raise ValueError(f"run {out} is finished: {done}; give a larger --steps or --minutes to continue it")
    else:
        used = [name for name in RUN_FILES if (out / name).exists()]
        if used and not overwrite:
            raise FileExistsError(f"{out} already holds a run ({', '.join(used)}); pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another -o")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        for name in RUN_FILES:
            for stale in remove_stale_temporaries(out / name):
                log.info("removed %s, left by a run that was stopped while writing it", stale)
    ctx.barrier()
    return state


def _finished(out: Path, state: dict, options) -> bool:
    """Whether the checkpoint has spent the budget and the run wrote its results.

    A run killed after its last checkpoint but before ``run.json`` is not finished: a
    resume writes what is missing without training further.
    """
    if options.steps is not None:
        spent = int(state["step"]) >= options.steps
    else:
        spent = float(state["elapsed_s"]) >= 60.0 * options.minutes
    if not spent or not (out / "model.safetensors").is_file():
        return False
    try:
        return int(json.loads((out / "run.json").read_text())["steps"]) == int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _trim_log(path: Path, step: int, fields: list[str]) -> None:
    """Make ``log.csv`` hold its header and the rows of steps 1 to ``step``, then nothing else.

    A stopped run logged rows after its last checkpoint: the resumed run logs them again.
    A row cut short by a kill is dropped, a missing header is written, and rows under
    another header (an older version's columns) are rewritten under this one.
    """
    header = ",".join(fields) + "\n"
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # the write of this row was cut short
    old_header = lines.pop(0) if lines and not lines[0].split(",", 1)[0].isdigit() else header

    def step_of(row: str) -> int | None:
        first = row.split(",", 1)[0]
        return int(first) if first.isdigit() else None

    rows = [row for row in lines if step_of(row) is not None and step_of(row) <= step]
    if old_header != header:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writerows(csv.DictReader([old_header, *rows]))
        rows = [buffer.getvalue()]
    kept = header + "".join(rows)
    if kept != text:
        with atomic_path(path) as tmp:
            tmp.write_text(kept)


def run_loop(task: Task, options, out_dir: str, state: dict | None, progress_bar: bool = True,
             extra_summary: dict | None = None) -> dict:
    """Train ``task`` until ``options.steps`` or ``options.minutes`` is spent.

    ``out_dir`` receives ``checkpoint.pt`` (resumable), ``model.safetensors`` (final
    weights with their configuration), ``log.csv`` and ``run.json``. ``options`` is a
    dataclass with ``steps``, ``minutes``, ``val_every``, ``save_every`` and ``ema``; it is
    stored in every checkpoint. With ``ema > 0`` validation and ``model.safetensors``
    use the moving average of the weights (:class:`EMA`).

    Under ``torchrun`` (``task.ctx`` with several ranks) every rank steps, rank 0's clock
    decides the budget for all, and only rank 0 validates and writes files.
    """
    from tqdm import tqdm

    ctx: Context = getattr(task, "ctx", Context())
    out = Path(out_dir)
    step, elapsed = 0, 0.0
    ema = EMA(task.model, options.ema) if options.ema else None
    if state is not None:
        task.model.load_state_dict(state["model"])
        task.optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" in state:
                ema.load_state_dict(state["ema"])
            else:  # the run had no average so far: start it from the resumed weights
                ema = EMA(task.model, options.ema)
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        if ctx.is_main:
            task.generator.set_state(state["generator"])
        else:  # the saved stream is rank 0's; the others begin theirs again, seeded for this step
            task.generator.manual_seed(ctx.seed(options.seed, step))
        task.stream.restart(step)  # worker streams are not saved: the same rule
        log.info("resumed %s at step %d (%.1f min)", out, step, elapsed / 60)

    def progress(at_step: int, at_elapsed: float) -> float:
        if options.steps is not None:
            return at_step / options.steps
        return at_elapsed / (60.0 * options.minutes)

    saved = [step if state is not None else None]  # the step of the checkpoint on disk

    def checkpoint() -> None:
        if not ctx.is_main:
            return
        saved[0] = step
        save_checkpoint(
            out / "checkpoint.pt", task.model, optimizer=task.optimizer.state_dict(),
            generator=task.generator.get_state(), step=step, elapsed_s=elapsed,
            options=json.dumps(asdict(options)), world_size=ctx.world_size,
            **({"ema": ema.state_dict()} if ema is not None else {}),
        )

    def averaged():
        return ema.applied(task.model) if ema is not None else nullcontext(task.model)

    fields = ["step", "phase", "loss", "lr", "elapsed_s", *task.log_fields]
    log_path = out / "log.csv"
    total = options.steps if options.steps is not None else int(60 * options.minutes)
    last_val: dict = {}
    if ctx.is_main:  # only rank 0 logs: the header now, and the rows of steps up to the checkpoint's
        _trim_log(log_path, step, fields)
    log_file = open(log_path, "a", newline="") if ctx.is_main else nullcontext()
    with log_file as log_fh, tqdm(
        total=total, initial=min(step if options.steps else int(elapsed), total),
        unit="step" if options.steps else "s", disable=not (progress_bar and ctx.is_main), dynamic_ncols=True,
    ) as bar:
        writer = (csv.DictWriter(log_fh, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
                  if log_fh else None)
        task.model.train()
        first_step = step
        try:
            while progress(step, elapsed) < 1.0:
                t0 = time.perf_counter()
                row = task.step(progress(step, elapsed))
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(
                        f"loss became {row['loss']} at step {step}; lower --lr or use --precision fp32"
                    )
                step += 1
                if ema is not None:
                    ema.update(task.model)
                validate = (step % options.val_every == 0
                            or progress(step, elapsed + time.perf_counter() - t0) >= 1.0)
                if validate and ctx.is_main:
                    task.model.eval()
                    with averaged():
                        last_val = task.validate()
                    task.model.train()
                # rank 0's clock: every rank must take the same number of steps and the same phases
                elapsed += ctx.broadcast_float(time.perf_counter() - t0)
                if writer:
                    writer.writerow({
                        **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()},
                        **({k: f"{v:.6g}" for k, v in last_val.items()} if validate else {}),
                        "step": step, "elapsed_s": f"{elapsed:.2f}",
                    })
                    log_fh.flush()  # each row on disk as it is written: a killed run keeps its log
                if step % options.save_every == 0:
                    checkpoint()
                bar.set_postfix(phase=row["phase"], loss=f"{row['loss']:.4g}",
                                **({"std_n": f"{last_val['noise_std_est']:.1f}"} if "noise_std_est" in last_val
                                   else {}))
                bar.update((1 if options.steps else int(elapsed) - bar.n) if bar.n < total else 0)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
                raise
            # no checkpoint of this half-done step: the one on disk, if any, stays as it was
            kept = (f"; the checkpoint of step {saved[0]} is kept, --resume continues from it"
                    if saved[0] is not None else "")
            raise ValueError(f"out of memory at step {step + 1} with --batch-size {options.batch_size} and "
                             f"--patch-size {options.patch_size}: give a smaller --batch-size or --patch-size"
                             f"{kept}") from err
        if step == first_step and ctx.is_main:  # resumed after the last step, killed before run.json
            task.model.eval()
            with averaged():
                last_val = task.validate()
    checkpoint()
    summary = {"steps": step, "elapsed_s": round(elapsed, 1), "model": task.model.config,
               "last_validation": last_val, "options": asdict(options), "world_size": ctx.world_size,
               **(extra_summary or {})}
    if ctx.enabled:  # every rank takes part in the gather
        summary["rank_parameter_checksums"] = ctx.gather_floats(parameter_checksum(task.model))
    if ctx.is_main:
        with averaged() as final:
            save_weights(out / "model.safetensors", final.eval())
        with atomic_path(out / "run.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    # no rank leaves (and tears down its process group) while rank 0 is still writing:
    # a gloo rank that exited early could abort on shutdown
    ctx.barrier()
    return summary
