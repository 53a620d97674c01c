"""Train the bundled models with `dbsn train` and `dbsn distill`, then bundle them with their cards.

    python benchmarks/bundled_models.py plan                 # every command, nothing run
    python benchmarks/bundled_models.py train gray           # stage 1, its heads, noisy set, student
    python benchmarks/bundled_models.py bundle gray          # storage check, weights, card, index.json

Every model trains on the clean training sets (train400, bsd432, div2k_val_crop256,
sun_hays80) with synthetic noise; no test image is seen. Each step is skipped when
its output exists, and a stopped training run is resumed (`--resume`) with the same
budget, so the whole recipe can span several sessions: run it again.

For AWGN and MG, stage 1 then trains its heads again (8 minutes, the D-BSN frozen)
with the noise estimator reading the residual ``y - mu`` (``--estimator-input
residual``): reading ``y`` alone, the gray model estimated std 22 on images with std 5.

The HG and MG models start from the AWGN ones of their channels (``FINE_TUNE``, ``--init``
at lr 5e-4) with shorter budgets: the gray AWGN student, blind to the level, gave 25.03 dB on
the first 8 BSD68 images with ``hg:40,10`` noise, so a noise of its own is worth training, but
not from random weights. The MG stage 1 keeps the AWGN D-BSN only; its full-covariance heads
start from scratch. The MG recipe starts from the bundled models by name (``FROM_BUNDLED``), so
it needs no earlier run on the machine that trains it.

The student learns from clean patches of all four sets with synthetic noise. For AWGN
and MG its level is one the teacher measured on noisy versions of train400 and
div2k_val_crop256 (`dbsn add-noise`, a fixed seed; `--synthetic-levels noisy`); for HG it
is CNN_est on the clean image (the paper's rule).

The student's loss keeps only the synthetic pairs (`--weight-noisy 0`); the teacher's
`x_hat` targets on the noisy copies weigh nothing, and the noisy copies serve to measure
the noise levels. With the paper's weight 0.1 the teacher still pulls: `mse` is a mean over
each part of the batch, so a teacher target weighs 0.1 / 2 per patch against 1 / 14 for a
synthetic pair, and a student that cannot tell the two inputs apart settles 40 % of the way
towards the teacher's output. The paper's teacher is almost as good as its student; this
CPU-sized one is not (26.5 dB against BM3D's 28.6 on BSD68 sigma 25). On all of BSD68
(`dbsn -q evaluate --model M --clean $DATASETS/bsd68 --noise awgn:S`), sigma 15 / 25 / 50:

- weight 0.1, 120 minutes (`runs/bundled/gray-w0.1`): 30.82 / 28.49 / 25.59;
- weight 0, 55 minutes (the bundled `gray`): 31.04 / 28.65 / 25.70.

Both numbers are with the students' reflection padding. Before it, repeated edge rows
hid most of the students' quality (27.51 and 28.13 at sigma 25), and a first comparison
on 8 images overstated the teacher's pull.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from common import DATASETS, MEASURED, TEST_SET, first_images, machine, run

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bundled"
WEIGHTS = ROOT / "src" / "dbsn" / "weights"
TRAIN_SETS = ("train400", "bsd432", "div2k_val_crop256", "sun_hays80")
NOISY_SETS = ("train400", "div2k_val_crop256")
# both learning rates named: with --init, dbsn train's defaults are lower than the bundled models had
STAGE1 = ["--model", "dbsn_small", "--precision", "bf16", "--lr", "1e-3", "--lr-heads", "3e-3", "--trace-weight",
          "0.1", "--phase-split", "0.8,0.2,0", "--val-fraction", "0.02", "--val-every", "500"]
HEADS_MINUTES = 8
# the teacher's x_hat targets weigh 0: see the module docstring
STUDENT = ["--student", "mwcnn_small", "--widths", "48,96,192", "--depth", "3", "--batch-size", "16",
           "--weight-noisy", "0", "--precision", "bf16", "--val-every", "1000"]

# colour students with a gray twin: one gray network per opponent channel, started from that twin
# (its weights on each channel, the luminance guide at zero; see dbsn.nn.students.OpponentColour)
OPPONENT_FROM = {"color": "gray"}
# students trained on from their own weights with a fresh, lower cosine schedule: name -> minutes, lr
# (the colour student's validation PSNR was still rising, 0.04 dB over its last 3,400 steps); a new
# seed gives it other patches and noise
MORE = {"color": (50, "2.5e-4")}
# students trained on after MORE, each run from the weights of the one before under a fresh cosine
# schedule, every patch synthetic (`--noisy-share 0`, as the noisy ones weigh 0), in fp32 (the 2-core
# Intel Xeon that trained them has no bf16 instructions; bf16 autocast ran a step 2.1x slower there):
# name -> [(run suffix, minutes, lr, seed, flags changed from the run before)]. `--depth` grows the
# student deeper (new layers at the identity), `--widths` wider (new channels with zero weights out,
# see dbsn.nn.students.MWCNN), so each run begins as the model the one before ended with. On all of
# CBSD68 at sigma 25 (`dbsn -q evaluate --model M --clean $DATASETS/cbsd68 --noise awgn:25`): `color`
# 30.78 dB, deep 30.797, deep-more 30.798 (at 48,96,192 channels more steps had stopped helping; the
# mean of the two runs' weights gave 30.798 too), wide 30.821, wide-more 30.832, wide-more2 in its card
GROWN = {"color": [
    ("deep", 65, "2e-4", 3, {"--depth": "4", "--precision": "fp32", "--noisy-share": "0"}),
    ("deep-more", 80, "2e-4", 4, {}),
    ("wide", 55, "2e-4", 5, {"--widths": "64,128,256", "--val-every": "500", "--save-every": "100"}),
    ("wide-more", 80, "2e-4", 6, {}),
    ("wide-more2", 70, "1e-4", 7, {"--ema": "0.995"}),
]}
GROWN_HOW = {"--depth": "grown to {} layers per level, the new layers starting as the identity",
             "--widths": "grown to widths {}, the new channels starting with zero weights out",
             "--ema": "validated and saved as the moving average of its weights (decay {})"}
# steps that ran with other arguments than the recipe's, and why; the cards say so
_BUNDLED_TEACHER = ("`color-stage1`, the bundled fp16 copy of the run `color-stage1r` (commit 6923d75), as that "
                    "run folder was no longer on the machine that trained it")
RAN_AS = {
    "color-deep": ("--teacher color-stage1 --init color",
                   _BUNDLED_TEACHER + "; and `color`, the bundled fp16 copy of `color-more` of that commit"),
    **{f"color-{suffix}": ("--teacher color-stage1", _BUNDLED_TEACHER) for suffix in ("deep-more", "wide", "wide-more", "wide-more2")},
    "color-mg": ("--init color", "the bundled colour student of its day (commit abdd0cd), the fp16 copy of "
                 "`color-more`"),
}
# the storage of each model: the package's rule (dbsn.bundle), the smallest within 0.01 dB

# name -> channels, noise, minutes of stage 1, minutes of the student, what it is for
RECIPES = {
    "gray": (1, "awgn:5-50", 40, 55, "gray images, Gaussian noise of unknown level (std 5 to 50)"),
    "color": (3, "awgn:5-50", 40, 70, "colour images, Gaussian noise of unknown level (std 5 to 50)"),
    "gray-hg": (1, "hg:40,10", 40, 30, "gray images, signal-dependent noise (alpha 40, delta 10)"),
    "color-hg": (3, "hg:40,10", 15, 25, "colour images, signal-dependent noise (alpha 40, delta 10)"),
    "color-mg": (3, "mg", 20, 30,
                 "colour images, Gaussian noise correlated across channels (`mg`: a random 3 x 3 covariance, std up to 75)"),
}
# recipes that fine-tune the AWGN models of their channels instead of starting from random weights:
# name -> (stage-1 run it starts from or None, student run it starts from). A denoiser for one noise
# is most of a denoiser for another, and a CPU cannot afford each model from scratch; the stage-1
# run gives all its weights where the heads have the same shapes (HG and AWGN) and only its D-BSN
# where they do not (MG's full covariance).
FINE_TUNE = {"gray-hg": (None, "gray"), "color-hg": ("color-stage1", "color-more"),
             "color-mg": ("color-stage1", "color-more")}
# FINE_TUNE sources that are the bundled models by name (`--init color-stage1`), not run folders: they
# need no earlier run on this machine. The MG student started from the bundled `color` of its day
# (commit abdd0cd), the fp16 copy of the run `color-more`; `color` has since grown (GROWN), so the
# recipe names that run
FROM_BUNDLED = {("color-mg", "color-stage1")}
FINE_TUNE_LR = "5e-4"  # also for a colour student grown from a gray one (OPPONENT_FROM)


def _init_source(name: str, source: str) -> str:
    """What ``--init`` gets for a FINE_TUNE source of recipe ``name``: a bundled name or a run's weights."""
    return source if (name, source) in FROM_BUNDLED else str(RUNS / source / "model.safetensors")


def commands(name: str, datasets: Path) -> list[tuple[Path, list[str]]]:
    """``(run folder, command)`` for each step of one recipe; the last stage-1 folder is the teacher."""
    channels, noise, minutes_s1, minutes_student, _ = RECIPES[name]
    sets = [str(datasets / s) for s in TRAIN_SETS]
    data = ["--clean", *sets, "--channels", str(channels), "--noise", noise]
    stage1_from, student_from = FINE_TUNE.get(name, (None, None))
    stage1 = STAGE1
    if stage1_from:
        stage1 = _replace(STAGE1, "--lr", FINE_TUNE_LR) + ["--init", _init_source(name, stage1_from)]
    steps = [(RUNS / f"{name}-stage1", ["dbsn", "-q", "train", *data, "--minutes", str(minutes_s1), *stage1])]
    if not noise.startswith("hg"):
        # the heads again, now with CNN_est reading y - mu: on y alone it cannot tell a range of levels apart
        steps.append((RUNS / f"{name}-stage1r", [
            "dbsn", "-q", "train", *data, "--init", str(steps[0][0] / "model.safetensors"),
            "--estimator-input", "residual", "--minutes", str(HEADS_MINUTES),
            *_replace(STAGE1, "--phase-split", "0,1,0")]))
    teacher = steps[-1][0]
    noisy, student = RUNS / f"{name}-noisy", RUNS / name
    levels = "clean" if noise.startswith("hg") else "noisy"
    student_args = list(STUDENT)
    if name in OPPONENT_FROM:
        student_from = str(RUNS / OPPONENT_FROM[name] / "model.safetensors")
    elif student_from:
        student_from = _init_source(name, student_from)
    if student_from:
        if channels == 3:
            student_args += ["--colour", "opponent"]  # grown from a gray student, or fine-tuning a colour one
        student_args += ["--init", student_from, "--lr", FINE_TUNE_LR]
    steps += [
        (noisy, ["dbsn", "-q", "add-noise", *[str(datasets / s) for s in NOISY_SETS], "--channels", str(channels),
                 "--noise", noise, "--seed", "0"]),
        (student, ["dbsn", "-q", "distill", "--teacher", str(teacher / "model.safetensors"), "--noisy", str(noisy),
                   "--clean", *sets, "--synthetic-levels", levels, "--minutes", str(minutes_student), *student_args]),
    ]
    if name in MORE:
        minutes, lr = MORE[name]
        more = _replace(steps[-1][1], "--minutes", str(minutes))
        more = _replace(_replace(more, "--init", str(student / "model.safetensors")), "--lr", lr)
        steps.append((RUNS / f"{name}-more", _replace(more, "--seed", "1")))
    for suffix, minutes, lr, seed, flags in GROWN.get(name, []):
        grown = _replace(steps[-1][1], "--init", str(steps[-1][0] / "model.safetensors"))
        for flag, value in {"--minutes": str(minutes), "--lr": lr, "--seed": str(seed), **flags}.items():
            grown = _replace(grown, flag, value)
        steps.append((RUNS / f"{name}-{suffix}", grown))
    return [(out, [*cmd, "-o", str(out)]) for out, cmd in steps]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag`` set to ``value``: its value replaced, or the flag appended."""
    out = list(args)
    if flag not in out:
        return out + [flag, value]
    out[out.index(flag) + 1] = value
    return out


def train(name: str, datasets: Path, stage1_only: bool = False) -> None:
    for out, cmd in commands(name, datasets):
        if stage1_only and cmd[2] != "train":
            return
        if cmd[2] == "add-noise":
            if not out.is_dir():
                run(cmd)
            continue
        summary = out / "run.json"
        budget = float(cmd[cmd.index("--minutes") + 1]) * 60
        if summary.is_file() and json.loads(summary.read_text())["elapsed_s"] >= budget - 1:
            continue  # finished
        run(cmd + ["--resume"] if (out / "checkpoint.pt").is_file() else cmd)


def bundle(name: str, datasets: Path, check_images: int) -> None:
    """Copy a finished recipe's weights into the package, with their cards, in the smallest storage
    (``dbsn.bundle.choose_storage``) that costs at most 0.01 dB against the trained fp32 weights on the check images.

    A model whose tensors are already bundled keeps its file and the measured rows of its card
    (``paper_tables.py --cards``); a changed model drops them, as they no longer describe it.
    A stage-1 model whose run folder is not on this machine stays as it is bundled.
    """
    import tempfile

    from dataclasses import astuple

    from dbsn.bundle import choose_storage, same_weights
    from dbsn.data.io import atomic_path

    channels, noise, _, _, description = RECIPES[name]
    steps = commands(name, datasets)
    stage1_steps = [step for step in steps if step[1][2] == "train"]
    check_noise = "awgn:25" if noise.startswith("awgn") else noise
    clean = first_images(datasets / TEST_SET[channels], check_images)
    index_path = WEIGHTS / "index.json"
    index = json.loads(index_path.read_text())
    for stage, (run_dir, cmd), entry in (("stage1", stage1_steps[-1], f"{name}-stage1"), ("student", steps[-1], name)):
        src = run_dir / "model.safetensors"
        dst = WEIGHTS / f"{entry}.safetensors"
        card_path = WEIGHTS / f"{entry}.md"
        if not src.is_file() and dst.is_file() and card_path.is_file():
            print(f"{entry}: kept as bundled ({run_dir} is not on this machine)")
            continue
        with tempfile.TemporaryDirectory(prefix="dbsn-bundle-") as scratch:
            candidate = Path(scratch) / dst.name
            storage, fp32, stored = astuple(choose_storage(src, candidate, clean, check_noise))
            unchanged = same_weights(candidate, dst)
            if not unchanged:
                with atomic_path(dst) as tmp:
                    tmp.write_bytes(candidate.read_bytes())
        old_card = card_path.read_text() if unchanged and card_path.is_file() else ""
        measured = "\n" + MEASURED + old_card.split(MEASURED, 1)[1] if MEASURED in old_card else ""
        summary = json.loads((run_dir / "run.json").read_text())
        card = _card(entry, stage, description, noise, stage1_steps if stage == "stage1" else steps, summary,
                     storage, fp32, stored, check_noise, check_images, channels)
        with atomic_path(card_path) as tmp:
            tmp.write_text(card + measured)
        index["models"][entry] = {
            "file": dst.name, "card": f"{entry}.md", "channels": channels, "stage": stage, "noise": noise,
            "description": description + (" (stage 1: D-BSN with noise estimator)" if stage == "stage1" else ""),
            **({"teacher": f"{name}-stage1"} if stage == "student" else {}),
        }
        print(f"{entry}: {storage} ({dst.stat().st_size / 1e6:.1f} MB){', unchanged' if unchanged else ''}, PSNR on "
              f"{check_images} {TEST_SET[channels]} images at {check_noise}: fp32 {fp32:.3f}, {storage} {stored:.3f}")
    if noise.startswith("awgn"):
        index["default"][str(channels)] = name
    with atomic_path(index_path) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")


def _run_record(out: Path, action: str) -> tuple[int, float, str] | None:
    """Steps, minutes and machine of the run ``out`` (``action``: train or distill): its run.json, or a card's.

    The run folders do not outlive the machine that trained them; the cards of the bundled models
    keep each step's count and time (`` `distill -o color`: 8383 steps, 70 min``) and the machine.
    """
    summary = out / "run.json"
    if summary.is_file():
        run_summary = json.loads(summary.read_text())
        return run_summary["steps"], run_summary["elapsed_s"] / 60, machine()
    step = re.compile(rf"`{action} -o {re.escape(out.name)}`: (\d+) steps, (\d+) min")
    for card in sorted(WEIGHTS.glob("*.md")):
        for line in card.read_text().splitlines():
            found = step.search(line)
            if found:  # the machine: the next "on ..." after the record, as _card writes it
                on = re.search(r"[;,] on ([^;]+?)(?:;|\.?$)", line[found.end():])
                return int(found[1]), float(found[2]), on[1] if on else "a machine the card does not name"
    return None


def _times(records: list[tuple[str, int, float, str]]) -> str:
    """`` `train -o a`: 10 steps, 5 min; `distill -o b`: ... on MACHINE`` with each machine after its runs."""
    parts, pending = [], []
    for i, (label, steps, minutes, where) in enumerate(records):
        pending.append(f"`{label}`: {steps} steps, {minutes:.0f} min")
        if i + 1 == len(records) or records[i + 1][3] != where:
            parts.append("; ".join(pending) + f", on {where}")
            pending = []
    return "; ".join(parts)


def _card(entry, stage, description, noise, steps, summary, storage, fp32, stored, check_noise, n, channels):
    def show(c):
        return "    " + shlex.join(c).replace(str(DATASETS) + "/", "$DATASETS/").replace(str(ROOT) + "/", "")

    trained = [show(c) for _, c in steps]
    records = []
    for out, cmd in steps:
        record = _run_record(out, cmd[2]) if cmd[2] != "add-noise" else None
        if record:
            records.append((f"{cmd[2]} -o {out.name}", *record))
    kind = "gray" if channels == 1 else "colour"
    data = (f"the clean training sets {', '.join(TRAIN_SETS)} (`$DATASETS` is `shared/datasets`), as {kind}, "
            f"with synthetic noise `{noise}` drawn afresh for every patch")
    if stage == "student":
        measured = "3 x 3 covariances" if noise.startswith("mg") else "levels"
        levels = (f"the {measured} the teacher measured on noisy copies of {' and '.join(NOISY_SETS)} (`dbsn "
                  "add-noise`, seed 0)" if not noise.startswith("hg") else
                  "the per-pixel levels the teacher's CNN_est reads off each clean image (the paper's rule)")
        data = (f"stage 1 on {data}; the student on the four clean sets with synthetic noise at {levels}; the "
                f"teacher's `x_hat` targets weigh 0 (`--weight-noisy 0`, see `benchmarks/bundled_models.py`)")
    last = summary.get("last_validation", {})
    where = "held-out images" if stage == "stage1" else "patches of the training images"
    role = ("Stage 1 of DBSN: the dilated blind-spot network with its uncertainty and noise-estimator heads; it "
            "also gives a per-pixel noise map (`dbsn denoise --noise-map`)." if stage == "stage1" else
            f"Stage 2 of DBSN: an MWCNN-style student distilled from the stage-1 model `{entry}-stage1`; "
            + ("the fast default model." if noise.startswith("awgn") else "the fast model for this noise."))
    if stage == "student" and entry in OPPONENT_FROM:
        twin_steps, twin_minutes, _ = _run_record(RUNS / OPPONENT_FROM[entry], "distill")
        role += (f" It is one gray network applied to each channel of an orthonormal opponent colour space "
                 f"(luminance and two colour differences, as CBM3D does), reading the luminance beside each "
                 f"channel (`--colour opponent`); it started from the gray student `{OPPONENT_FROM[entry]}` "
                 f"(`--init`; {twin_steps} steps, {twin_minutes:.0f} min, see its card), so its "
                 f"training includes that student's.")
    tuned_from = FINE_TUNE.get(entry.removesuffix("-stage1"), (None, None))[stage == "student"]
    if tuned_from:
        part = "Its D-BSN started from" if stage == "stage1" and noise == "mg" else "It was fine-tuned from"
        awgn = ("gray" if channels == 1 else "color") + ("-stage1" if stage == "stage1" else "")
        if (entry.removesuffix("-stage1"), tuned_from) in FROM_BUNDLED:
            source = f"`--init {tuned_from}`, the bundled weights, lr {FINE_TUNE_LR}; see its card"
        else:
            tuned_steps, tuned_minutes, _ = _run_record(RUNS / tuned_from, "train" if stage == "stage1" else "distill")
            source = (f"`--init` from its run `{tuned_from}`, lr {FINE_TUNE_LR}; that run: {tuned_steps} steps, "
                      f"{tuned_minutes:.0f} min, see `{awgn}`'s card")
        role += f" {part} the AWGN model `{awgn}` ({source}), so its training includes that model's."
        if part.startswith("Its D-BSN"):
            role += " Its heads, for a full covariance, started from scratch."
    if stage == "student" and entry in MORE:
        role += (f" Its training then went on from its own weights for {MORE[entry][0]} minutes under a fresh "
                 f"cosine schedule from lr {MORE[entry][1]}, with a new seed (`-o {entry}-more`).")
    if stage == "student" and entry in GROWN:
        runs = []
        for suffix, minutes, lr, _, flags in GROWN[entry]:
            how = [GROWN_HOW[f].format(v) for f, v in flags.items() if f in GROWN_HOW]
            runs.append(f"`-o {entry}-{suffix}`, {minutes} minutes from lr {lr}" + "".join(f", {h}" for h in how))
        role += (" Then it trained on in fp32, every patch synthetic, each run from the weights of the one before "
                 "under a fresh cosine schedule with a new seed: " + "; ".join(runs) + ".")
    alike: dict[tuple[str, str], list[str]] = {}  # runs that ran alike share a line
    for out, cmd in steps:
        if out.name in RAN_AS:
            alike.setdefault(RAN_AS[out.name], []).append(f"`{cmd[2]} -o {out.name}`")
    ran_as = [f"{', '.join(runs[:-1]) + ' and ' if len(runs) > 1 else ''}{runs[-1]} ran with `{args}`: {why}."
              for (args, why), runs in alike.items()]
    from dbsn.bundle import STORAGE_TEXT

    storage_text = STORAGE_TEXT[storage]
    return f"""# {entry}

{description}. {role}

## How it was trained
With this package's own commands only (`python benchmarks/bundled_models.py train
{entry.removesuffix('-stage1')}` runs them):

{chr(10).join(trained)}
{"".join(chr(10) + line + chr(10) for line in ran_as)}
- Data: {data}. No test image (BSD68, CBSD68, Set12, Set14) was seen.
- Steps and wall time: {_times(records)}.
- Last validation ({where}): {", ".join(f"{k} {v:.3f}" for k, v in last.items())}.

## Storage
{storage_text} On the first {n} {TEST_SET[channels]} images at `{check_noise}`: PSNR {fp32:.3f} dB
with the fp32 weights, {stored:.3f} dB as stored (the smallest of int8, fp16 and fp32 that costs at most
0.01 dB is kept).

## Results
The paper's protocol (METHOD.md section 5): every test image gets noise from
`numpy.random.seed(0)`, the noisy image is neither clipped nor quantised, the output is
clamped to [0, 1], PSNR is on floats with data range 1, averaged over the images.
Every row, BM3D beside it, is in the README's results table
(`python benchmarks/paper_tables.py`).
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("plan", "train", "bundle"))
    p.add_argument("names", nargs="*", default=list(RECIPES), help=f"recipes (default: all): {', '.join(RECIPES)}")
    p.add_argument("--datasets", type=Path, default=DATASETS)
    p.add_argument("--stage1-only", action="store_true", help="train: stop once the teacher is trained")
    p.add_argument("--check-images", type=int, default=8, help="test images for the fp16 storage check")
    args = p.parse_args()
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        print(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}", file=sys.stderr)
        return 2
    for name in args.names:
        if args.action == "plan":
            for _, cmd in commands(name, args.datasets):
                print(shlex.join(cmd))
        elif args.action == "train":
            train(name, args.datasets, args.stage1_only)
        else:
            bundle(name, args.datasets, args.check_images)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
