"""One plain training loop shared by every training task, and the options every task has.

A task owns its model, optimizer and data and says what the loss of a batch is; the loop
owns the optimiser step, the budget (steps or minutes), the progress bar, the CSV log
(the loss and its parts), validation, checkpoints and resume.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from ..data import BatchStream
from ..data.io import atomic_path, remove_stale_temporaries
from ..data.patches import MAX_PATCH, MIN_SIDE
from .. import distributed
from ..distributed import Context, parameter_checksum
from ..hub import read_checkpoint, save_checkpoint, save_weights
from ..options import check_ranges, option
from ..runtime import INFERENCE_PRECISIONS, is_out_of_memory, resolve_precision
from .ema import EMA

log = logging.getLogger("dbsn")


INIT_HELP = "start from these weights (checkpoint, weights file or bundled name): fine-tuning"
PATCH_HELP = f"side of the square training patches ({MIN_SIDE} to {MAX_PATCH}, at most twice the largest image side)"
PRECISION_HELP = ("autocast for the network (auto: bf16 where the CPU (AVX-512 BF16 or AMX) or the GPU computes it "
                  "natively, else fp32; fp16: GPUs, with a gradient scaler); the heads and the losses stay in fp32")
EMA_HELP = "average the weights with this decay (e.g. 0.995; 0: off); validation and the saved weights use the average"
WORKERS_HELP = ("processes that draw training batches (0: this process); a GPU needs a few, "
                "a small CPU machine none")
CACHE_HELP = ("keep the decoded training images in memory up to this many GB (default: half the available "
              "memory); a larger set is decoded from its files on demand, which --workers hides")


@dataclass
class RunOptions:
    """The options every training run has; a task's options add their own (and may change a default).

    Stored in every checkpoint and in ``run.json``; the command line is built from the fields.
    """

    init: str | None = option(None, INIT_HELP, group="model")
    steps: int | None = option(None, "number of optimisation steps", low=1, integer=True, group="budget")
    minutes: float | None = option(None, "wall-clock budget in minutes", low=0, low_open=True, group="budget")
    batch_size: int = option(8, "patches per step", low=1, integer=True, group="optimisation")
    patch_size: int = option(96, PATCH_HELP, low=MIN_SIDE, high=MAX_PATCH, integer=True, what="a patch size",
                             group="optimisation")
    lr: float = option(3e-4, "Adam learning rate of the network (the D-BSN; in distillation, the student)", low=0,
                       group="optimisation")
    seed: int = option(0, "seed of every random draw of the run", low=0, integer=True, group="optimisation")
    precision: str = option("fp32", PRECISION_HELP, choices=INFERENCE_PRECISIONS, group="optimisation")
    ema: float = option(0.0, EMA_HELP, low=0, high=1, high_open=True, group="optimisation")
    workers: int = option(0, WORKERS_HELP, low=0, integer=True, group="optimisation")
    cache_gb: float | None = option(None, CACHE_HELP, low=0, group="optimisation")
    val_patches: int = option(16, "validation patches", low=1, integer=True, cli=False)
    val_every: int = option(200, "validate every this many steps", low=1, integer=True, group="optimisation")
    save_every: int = option(500, "write checkpoint.pt every this many steps", low=1, integer=True,
                             group="optimisation")
    snapshot_minutes: float | None = option(None, "also keep the weights every this many minutes of training, in "
                                                  "snapshots/ (a learning curve)", low=0, low_open=True,
                                            group="optimisation")
    device: str = option("auto", "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:1, mps", group="optimisation")

    def validate(self) -> None:
        """Raise ``ValueError`` with what to change when an option is out of its range."""
        check_budget(self.steps, self.minutes)
        check_ranges(self)  # every option's declared range and choices, the budget's too


class Task(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's gradient scaler; inactive otherwise
    generator: torch.Generator
    stream: BatchStream  # the training batches, drawn from ``generator`` or by worker processes
    loss_parts: list[str]  # the parts ``losses`` returns beside ``"loss"``, logged in their columns
    log_fields: list[str]  # what ``validate`` returns

    def losses(self, progress: float) -> dict:
        """The loss of one batch at ``progress`` (0 to 1): ``{"loss": tensor to minimise, part: tensor, ...,
        "phase": str, "lr": float}``; the loop takes the optimiser step."""

    def validate(self) -> dict:
        """Validation metrics (floats)."""

    def summary(self) -> dict:
        """What ``run.json`` records of the task's data (image counts, skipped files, ...)."""

    # optional: ``report(out, weights, last_validation) -> dict | None``, run once on the main rank after
    # the final weights are written; what it returns goes into ``run.json`` as ``quality_report``


def optimiser_step(task: Task, loss: torch.Tensor) -> None:
    """One step of ``task.optimizer`` on ``loss`` (scaled for fp16)."""
    task.optimizer.zero_grad(set_to_none=True)
    task.scaler.scale(loss).backward()
    task.scaler.step(task.optimizer)
    task.scaler.update()


def cosine(q: float, floor: float = 0.05) -> float:
    """Learning-rate factor: from 1 at ``q = 0`` down to ``floor`` at ``q = 1``."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * q))


SNAPSHOT_NAME = re.compile(r"step-\d{8}\.safetensors")


def snapshot_name(step: int) -> str:
    """The file name of the snapshot after ``step`` steps (its metadata holds the minutes); by name is by time."""
    return f"step-{step:08d}.safetensors"


def _next_multiple(seconds: float, interval: float) -> float:
    return interval * (math.floor(seconds / interval) + 1) if interval < math.inf else math.inf


def check_budget(steps: int | None, minutes: float | None) -> None:
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one budget: --steps N or --minutes M")


RUN_FILES = ("checkpoint.pt", "model.safetensors", "log.csv", "run.json", "report.json", "report.png")  # what a run writes into its folder


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
        used += [str(p.relative_to(out)) for p in _snapshots(out)]
        if used and not overwrite:
            raise FileExistsError(f"{out} already holds a run ({', '.join(used)}); pass --resume to continue it, "
                                  "--overwrite to replace it, or choose another -o")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for path in _snapshots(out):
                path.unlink()
        for name in RUN_FILES:
            for stale in remove_stale_temporaries(out / name):
                log.info("removed %s, left by a run that was stopped while writing it", stale)
    ctx.barrier()
    return state


def _snapshots(out: Path) -> list[Path]:
    """The weights a run kept with ``--snapshot-minutes`` in ``out`` (only the names it writes)."""
    return sorted(p for p in (out / "snapshots").glob("step-*.safetensors") if SNAPSHOT_NAME.fullmatch(p.name))


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


def run_task(task_class, options: RunOptions, out_dir: str, resume: bool = False, progress_bar: bool = True,
             overwrite: bool = False) -> dict:
    """Validate ``options``, set up the devices (and ``torchrun``'s ranks), prepare ``out_dir``, build
    ``task_class(options, device, ctx)`` and train it with :func:`run_loop`; returns the summary."""
    options.validate()
    ctx, device = distributed.setup(options.device)
    # "auto" becomes what runs here, once: the checkpoints record it, and a resumed run keeps it
    options = replace(options, precision=resolve_precision(options.precision, device, bf16_exact=True))
    task = None
    try:
        state = prepare_run(out_dir, resume, ctx, options=options, overwrite=overwrite)
        task = task_class(options, device, ctx)
        return run_loop(task, options, out_dir, state, progress_bar,
                        extra_summary={**task.summary(), "device": str(device)})
    finally:
        task = None  # the model's DDP wrapper goes before its process group
        distributed.teardown(ctx)


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

    # the next snapshot is due at this many seconds: the first multiple of the interval past the clock
    snapshot_s = 60.0 * options.snapshot_minutes if options.snapshot_minutes else math.inf
    next_snapshot = [_next_multiple(elapsed, snapshot_s)]

    def snapshot() -> None:
        if elapsed < next_snapshot[0]:
            return
        next_snapshot[0] = _next_multiple(elapsed, snapshot_s)  # intervals a slow step spanned are one snapshot
        if ctx.is_main:
            with averaged() as weights:
                was_training = weights.training
                save_weights(out / "snapshots" / snapshot_name(step), weights.eval(),
                             metadata={"step": step, "elapsed_s": round(elapsed, 3)})
                weights.train(was_training)

    fields = ["step", "phase", "loss", *task.loss_parts, "lr", "elapsed_s", *task.log_fields]
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
                parts = task.losses(progress(step, elapsed))
                optimiser_step(task, parts["loss"])
                row = {k: (v.item() if torch.is_tensor(v) else v) for k, v in parts.items()}
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
                snapshot()
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
        report = getattr(task, "report", None)
        if report is not None:
            try:
                written = report(out, out / "model.safetensors", last_val)
            except Exception as err:  # noqa: BLE001  the weights are written: a failed report must not lose run.json
                log.warning("the quality report could not be written (%s); the weights are fine", err)
            else:
                if written is not None:
                    summary["quality_report"] = written
        with atomic_path(out / "run.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    # no rank leaves (and tears down its process group) while rank 0 is still writing:
    # a gloo rank that exited early could abort on shutdown
    ctx.barrier()
    return summary
