"""One plain training loop shared by every training task.

A task owns its model, optimizer and data; the loop owns the budget (steps or
minutes), the progress bar, the CSV log, validation, checkpoints and resume.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from ..data import BatchStream
from ..data.io import atomic_path
from ..distributed import Context, parameter_checksum
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


def check_budget(steps: int | None, minutes: float | None) -> None:
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one budget: --steps N or --minutes M")
    if (steps is not None and steps < 1) or (minutes is not None and minutes <= 0):
        raise ValueError("the budget must be positive")


def check_ema(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"--ema takes a decay in [0, 1) (0: off, e.g. 0.995), got {decay}")


def prepare_run(out_dir: str, resume: bool, ctx: Context = Context()) -> dict | None:
    """Check the run folder; return the checkpoint to resume from, or None for a new run.

    Every rank checks the same folder; all of them pass the barrier before any writes.
    """
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    state = None
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        state = read_checkpoint(ckpt)
    elif ckpt.exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another -o")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state is not None:
            _trim_log(out / "log.csv", int(state["step"]))
    ctx.barrier()
    return state


def _trim_log(path: Path, step: int) -> None:
    """Drop the rows a stopped run logged after its last checkpoint: the resumed run logs them again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    first = [row.split(",", 1)[0] for row in lines]
    kept = lines[:1] + [row for row, f in zip(lines[1:], first[1:]) if not f.isdigit() or int(f) <= step]
    if len(kept) < len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))


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
        else:  # the saved stream is rank 0's; the others restart theirs from their seed and the step
            task.generator.manual_seed(ctx.seed(options.seed) + step)
        task.stream.restart(ctx.seed(options.seed) + step)  # worker streams are not saved: same rule
        log.info("resumed %s at step %d (%.1f min)", out, step, elapsed / 60)

    def progress(at_step: int, at_elapsed: float) -> float:
        if options.steps is not None:
            return at_step / options.steps
        return at_elapsed / (60.0 * options.minutes)

    def checkpoint() -> None:
        if not ctx.is_main:
            return
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
    new_log = not log_path.exists()
    total = options.steps if options.steps is not None else int(60 * options.minutes)
    last_val: dict = {}
    log_file = open(log_path, "a", newline="") if ctx.is_main else nullcontext()  # only rank 0 logs
    with log_file as log_fh, tqdm(
        total=total, initial=min(step if options.steps else int(elapsed), total),
        unit="step" if options.steps else "s", disable=not (progress_bar and ctx.is_main), dynamic_ncols=True,
    ) as bar:
        writer = (csv.DictWriter(log_fh, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
                  if log_fh else None)
        if new_log and writer:
            writer.writeheader()
        task.model.train()
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
            validate = step % options.val_every == 0 or progress(step, elapsed + time.perf_counter() - t0) >= 1.0
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
                if step % options.val_every == 0:
                    log_fh.flush()
            if step % options.save_every == 0:
                checkpoint()
            bar.set_postfix(phase=row["phase"], loss=f"{row['loss']:.4g}",
                            **({"std_n": f"{last_val['noise_std_est']:.1f}"} if "noise_std_est" in last_val else {}))
            bar.update((1 if options.steps else int(elapsed) - bar.n) if bar.n < total else 0)
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
