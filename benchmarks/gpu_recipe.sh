#!/usr/bin/env bash
# The bundled-model recipe (benchmarks/bundled_models.py) sized for one GPU and one device call:
# the paper-size D-BSN (stage 1, then its heads reading y - mu), noisy copies of the training
# images, the strongest student (mwcnn_small 64,128,256, depth 4), and the protocol's PSNR of
# the teacher and the student at sigma 15, 25 and 50.
#
# On the GPU machine (the device tool's `run`), which has no ../shared: copy the sets into the
# repo first, ignored by git so that only `carry` sends them. The whole working tree that travels
# is capped at 64 MiB and the repo alone is about 50 MB (the bundled weights), so a gray run fits
# with train400 (8.2 MB), bsd68 (6.5 MB) and set12 (1.2 MB) only, hence TRAIN_SETS and NOISY_SETS:
#     mkdir -p datasets && cp -r ../shared/datasets/{train400,bsd68,set12} datasets/
#     echo /datasets/ >> .git/info/exclude
#     run(command="DATASETS=datasets TRAIN_SETS=train400 NOISY_SETS=train400 bash benchmarks/gpu_recipe.sh",
#         carry=["datasets"], timeout_s=600)
# Colour needs cbsd68 (18 MB) alone: copy the first images of each set instead, and name the
# sets in TRAIN_SETS, NOISY_SETS and TEST_SETS.
#
# The defaults train for 8 minutes, so that start-up, decoding and the 12 evaluations stay inside
# one 600-second command (a second call finds the machine warm for 30 s only); MIN_STAGE1=5
# MIN_HEADS=1.5 MIN_STUDENT=3.5 make it about 11 minutes, past one command. A stopped run
# resumes when the script runs again with the same RUNS: each step skips itself once its output
# exists, and a training run with a checkpoint.pt goes on with --resume.
#
# Dry run on a CPU (tiny models, 2 steps each, a few images, sigma 25 only; under a minute):
#     TINY=1 RUNS=/tmp/gpu-recipe bash benchmarks/gpu_recipe.sh
#
# What comes back in $OUT (flat, at most 7 files): each run's weights as <run>.safetensors
# (in fp16 where fp32 is over the 16 MiB a file may be: the D-BSN and the student are), its
# <run>.run.json, and <prefix>-summary.json. To bundle a model, rebuild its run folder here:
#     mkdir -p runs/bundled/gray-gpu && cp OUT/gray-gpu.safetensors runs/bundled/gray-gpu/model.safetensors
#     cp OUT/gray-gpu.run.json runs/bundled/gray-gpu/run.json
#     dbsn bundle runs/bundled/gray-gpu -o src/dbsn/weights --name gray-gpu --check ../shared/datasets/bsd68 --noise awgn:25
# (or add a recipe for it to benchmarks/bundled_models.py and run its `bundle` action).
#
# Knobs (environment variables): CHANNELS 1 or 3 (runs gray-gpu-* or color-gpu-*); DATASETS;
# RUNS (runs/bundled, where bundled_models.py and `dbsn bundle` read run folders); MIN_STAGE1,
# MIN_HEADS, MIN_STUDENT (minutes); BATCH (the student's), BATCH_STAGE1; WORKERS; DEVICE;
# TRAIN_SETS, NOISY_SETS, TEST_SETS, NOISES (sigmas); PYTHON; TINY=1 for the dry run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LC_COLLATE=C  # glob order = Python's sorted(), so "the first images" are the ones dbsn lists first
CHANNELS=${CHANNELS:-1}
DATASETS=${DATASETS:-$ROOT/../shared/datasets}
RUNS=${RUNS:-$ROOT/runs/bundled}
TINY=${TINY:-0}
DEVICE=${DEVICE:-auto}
MIN_STAGE1=${MIN_STAGE1:-4}
MIN_HEADS=${MIN_HEADS:-1}  # the heads train on a cache of the frozen D-BSN's outputs: cheap steps
MIN_STUDENT=${MIN_STUDENT:-3}
NOISE=awgn:5-50
case $CHANNELS in
    1) KIND=gray; TEST_DEFAULT="bsd68 set12" ;;
    3) KIND=color; TEST_DEFAULT="cbsd68 set14" ;;
    *) echo "CHANNELS must be 1 or 3, got '$CHANNELS'" >&2; exit 2 ;;
esac
TRAIN_SETS=${TRAIN_SETS:-train400 bsd432 div2k_val_crop256 sun_hays80}
NOISY_SETS=${NOISY_SETS:-train400 div2k_val_crop256}
TEST_SETS=${TEST_SETS:-$TEST_DEFAULT}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
# the GPU machine has torch but no installed dbsn: run it from the source tree
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$TINY" = 1 ]; then
    PREFIX=$KIND-gpu-tiny  # never mistaken for (or skipped in favour of) a real run in the same RUNS
    MODEL=dbsn_tiny; PRECISION=fp32; PATCH=32
    BATCH=${BATCH:-2}; BATCH_STAGE1=${BATCH_STAGE1:-2}; WORKERS=${WORKERS:-0}
    NOISES=${NOISES:-25}
    STUDENT_SIZE=(--widths 16,32,64 --depth 2)  # the same code path at a tenth of the CPU time
    BUDGET_STAGE1=(--steps 2); BUDGET_HEADS=(--steps 2); BUDGET_STUDENT=(--steps 2)
else
    PREFIX=$KIND-gpu
    MODEL=dbsn; PRECISION=bf16; PATCH=96
    BATCH=${BATCH:-64}; BATCH_STAGE1=${BATCH_STAGE1:-32}; WORKERS=${WORKERS:-8}
    NOISES=${NOISES:-15 25 50}
    STUDENT_SIZE=(--widths 64,128,256 --depth 4)
    BUDGET_STAGE1=(--minutes "$MIN_STAGE1"); BUDGET_HEADS=(--minutes "$MIN_HEADS")
    BUDGET_STUDENT=(--minutes "$MIN_STUDENT")
fi

for dataset in $TRAIN_SETS $NOISY_SETS $TEST_SETS; do
    if [ ! -d "$DATASETS/$dataset" ]; then
        echo "dataset $DATASETS/$dataset not found: set DATASETS, or leave $dataset out of TRAIN_SETS/NOISY_SETS/TEST_SETS" >&2
        exit 2
    fi
done
mkdir -p "$RUNS"
# absolute, as run.json and the checkpoints record them: --resume reads the data folders from there
RUNS=$(cd "$RUNS" && pwd) DATASETS=$(cd "$DATASETS" && pwd)

# first_images SET N: the folder of SET, or in a tiny run a folder linking its first N images; it
# stays in RUNS, since a resumed run reads its data from the folders its checkpoint names
first_images() {
    local src=$DATASETS/$1 dst=$RUNS/$PREFIX-images/$1 n=0 f
    if [ "$TINY" != 1 ]; then echo "$src"; return; fi
    mkdir -p "$dst"
    for f in "$src"/*; do
        case ${f,,} in *.png | *.jpg | *.jpeg | *.tif | *.tiff | *.bmp) ;; *) continue ;; esac
        [ -f "$f" ] || continue
        ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$dst/"
        n=$((n + 1))
        [ "$n" -lt "$2" ] || break
    done
    echo "$dst"
}

CLEAN=(); for dataset in $TRAIN_SETS; do CLEAN+=("$(first_images "$dataset" 3)"); done
NOISY_IN=(); for dataset in $NOISY_SETS; do NOISY_IN+=("$(first_images "$dataset" 3)"); done

STEP_SECONDS=()  # "name=seconds" of the steps this invocation ran, for the summary
say() { printf '$'; printf ' %q' "$@"; printf '\n'; }
dbsn() { "$PYTHON" -m dbsn -q "$@"; }
loud() { say "$@"; "$@"; }

# export_run RUN: its weights and run.json into $OUT, under flat names
export_run() {
    [ -n "${OUT:-}" ] || return 0
    local run=$RUNS/$1
    cp "$run/run.json" "$OUT/$1.run.json"
    if [ "$(stat -c %s "$run/model.safetensors")" -lt $((16 * 1024 * 1024)) ]; then
        cp "$run/model.safetensors" "$OUT/$1.safetensors"
    else  # over the size a returned file may be: fp16 halves it
        "$PYTHON" -c 'import sys; from dbsn.bundle import save_in_storage; save_in_storage(sys.argv[1], sys.argv[2], "fp16")' \
            "$run/model.safetensors" "$OUT/$1.safetensors"
    fi
}

# train_run RUN COMMAND ARGS...: `dbsn COMMAND ARGS -o RUNS/RUN`, skipped when finished, resumed when stopped
train_run() {
    local name=$1 command=$2 start=$SECONDS
    shift 2
    local run=$RUNS/$name extra=()
    if [ -f "$run/model.safetensors" ] && [ -f "$run/run.json" ]; then
        echo "skip $name: $run/model.safetensors exists"
        export_run "$name"
        return
    fi
    if [ -f "$run/checkpoint.pt" ]; then
        extra=(--resume)  # the same budget: it trains only what is left of it
    elif [ -d "$run" ]; then
        extra=(--overwrite)  # stopped before its first checkpoint: nothing to keep but a partial log
    fi
    loud dbsn "$command" "$@" -o "$run" "${extra[@]}"
    STEP_SECONDS+=("$name=$((SECONDS - start))")
    export_run "$name"
}

S1=$PREFIX-stage1 S1R=$PREFIX-stage1r STUDENT=$PREFIX NOISY=$RUNS/$PREFIX-noisy EVAL=$RUNS/$PREFIX-eval
DATA=(--clean "${CLEAN[@]}" --channels "$CHANNELS" --noise "$NOISE")
# bundled_models.py's STAGE1 flags, with the paper's size and a GPU's batch
STAGE1=(--model "$MODEL" --precision "$PRECISION" --lr 1e-3 --trace-weight 0.1 --val-fraction 0.02 --val-every 500
        --batch-size "$BATCH_STAGE1" --patch-size "$PATCH" --workers "$WORKERS" --device "$DEVICE")

# (a) stage 1, then its heads again with CNN_est reading y - mu: on y alone it cannot tell a range of levels apart
train_run "$S1" train "${DATA[@]}" "${BUDGET_STAGE1[@]}" "${STAGE1[@]}" --phase-split 0.8,0.2,0
train_run "$S1R" train "${DATA[@]}" --init "$RUNS/$S1/model.safetensors" --estimator-input residual \
    "${BUDGET_HEADS[@]}" "${STAGE1[@]}" --phase-split 0,1,0

if [ -d "$NOISY" ]; then
    echo "skip $PREFIX-noisy: $NOISY exists"
else  # written beside it and renamed, so that a stopped add-noise never passes for a finished one
    start=$SECONDS
    rm -rf "$NOISY.part"
    loud dbsn add-noise "${NOISY_IN[@]}" --channels "$CHANNELS" --noise "$NOISE" --seed 0 -o "$NOISY.part"
    mv "$NOISY.part" "$NOISY"
    STEP_SECONDS+=("$PREFIX-noisy=$((SECONDS - start))")
fi

# (b) the student on synthetic pairs only, at the levels the teacher measured on the noisy copies
# (the teacher's x_hat targets weigh 0: see bundled_models.py's docstring)
train_run "$STUDENT" distill --teacher "$RUNS/$S1R/model.safetensors" --noisy "$NOISY" --clean "${CLEAN[@]}" \
    "${BUDGET_STUDENT[@]}" --student mwcnn_small "${STUDENT_SIZE[@]}" --weight-noisy 0 --noisy-share 0 \
    --synthetic-levels noisy --precision "$PRECISION" --batch-size "$BATCH" --patch-size "$PATCH" \
    --val-every 1000 --workers "$WORKERS" --device "$DEVICE"

# the paper's protocol (fp32, seed-0 noise per image); --channels converts the odd gray image of set14
mkdir -p "$EVAL"
start=$SECONDS ran=0
for name in "$S1R" "$STUDENT"; do
    for dataset in $TEST_SETS; do
        clean=$(first_images "$dataset" 2)
        for sigma in $NOISES; do
            json=$EVAL/$name-$dataset-awgn$sigma.json
            [ -f "$json" ] && continue
            ran=1
            say dbsn evaluate --model "$RUNS/$name/model.safetensors" --clean "$clean" --noise "awgn:$sigma" \
                --channels "$CHANNELS" --device "$DEVICE" --json "$json"
            dbsn evaluate --model "$RUNS/$name/model.safetensors" --clean "$clean" --noise "awgn:$sigma" \
                --channels "$CHANNELS" --device "$DEVICE" --json "$json" >/dev/null
        done
    done
done
if [ "$ran" = 1 ]; then STEP_SECONDS+=("$PREFIX-eval=$((SECONDS - start))"); fi

SUMMARY=$RUNS/$PREFIX-summary.json
export CHANNELS TINY MIN_STAGE1 MIN_HEADS MIN_STUDENT BATCH BATCH_STAGE1 WORKERS DEVICE TRAIN_SETS NOISY_SETS \
    TEST_SETS NOISES  # the values this run used, for the summary
"$PYTHON" - "$SUMMARY" "$RUNS" "$EVAL" "$S1 $S1R $STUDENT" "${STEP_SECONDS[@]}" <<'EOF'
import json
import math
import os
import sys
from pathlib import Path

summary_path, runs, eval_dir, names, *timings = sys.argv[1:]
runs, summary_path = Path(runs), Path(summary_path)
old = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
seconds = {**old.get("step_seconds", {}), **{k: int(v) for k, v in (t.split("=") for t in timings)}}
rows = []
for path in sorted(Path(eval_dir).glob("*.json")):
    result = json.loads(path.read_text())
    model, test_set, _ = path.stem.rsplit("-", 2)
    rows.append({"model": model, "set": test_set, "noise": result["noise"], "n_images": result["n_images"],
                 **{k: result[k] for k in ("psnr", "psnr_mu", "ssim", "noise_std_est")}})
rows.sort(key=lambda r: (r["model"], r["set"], float(r["noise"].split(":")[1])))
summary = {
    "runs": {name: {k: v for k, v in json.loads((runs / name / "run.json").read_text()).items()
                    if k in ("steps", "elapsed_s", "last_validation", "model", "device")} for name in names.split()},
    "step_seconds": seconds,  # wall time of each step, start-up and decoding included
    "knobs": {k: os.environ.get(k) for k in ("CHANNELS", "TINY", "MIN_STAGE1", "MIN_HEADS", "MIN_STUDENT", "BATCH",
                                             "BATCH_STAGE1", "WORKERS", "DEVICE", "TRAIN_SETS", "NOISY_SETS",
                                             "TEST_SETS", "NOISES")},
    "results": rows,
}
bad = [f"{r['model']} {r['set']} {r['noise']}" for r in rows if not math.isfinite(r["psnr"])]
if bad:  # a broken run must not pass for a result
    sys.exit(f"PSNR not finite for {', '.join(bad)}: expected finite numbers; look at the run's log.csv")
tmp = summary_path.with_suffix(".json.tmp")
tmp.write_text(json.dumps(summary, indent=2) + "\n")
tmp.replace(summary_path)
print(f"{'model':<24} {'set':<10} {'noise':<9} {'PSNR':>7}")
for r in rows:
    print(f"{r['model']:<24} {r['set']:<10} {r['noise']:<9} {r['psnr']:7.2f}")
print(f"summary: {summary_path}")
EOF

if [ -n "${OUT:-}" ]; then cp "$SUMMARY" "$OUT/"; fi
