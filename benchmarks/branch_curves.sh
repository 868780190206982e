#!/usr/bin/env bash
# Issue #26 item 3: per-branch learning curves on magnetic-tile, ours and anomalib 2.7's loop,
# started or resumed with one command, niced, one core each, from a frozen copy of the code in a
# run folder outside the repository. Both sides: the shipped teacher, float32, the paper's
# 70,000-step schedule stopped at STOP (so the learning rate is 1e-4 throughout on both), points
# at EVAL_AT; ours with oneDNN's direct convolutions (--cpu-winograd off), anomalib's arithmetic, as
# the curves of sessions 13-18 were run. It returns at once.
#
#   bash benchmarks/branch_curves.sh                  # from the repository root
#   SEED=1 bash benchmarks/branch_curves.sh           # another seed, its own folders
#   bash benchmarks/branch_curves.sh score            # score anomalib's new points, print both tables
#   SIDES=anomalib bash benchmarks/branch_curves.sh   # one side only (SIDES="ours anomalib" is the default)
#   SIDES=anomalib ANOMALIB_CORE=0 bash ...           # on another core (OURS_CORE=0, ANOMALIB_CORE=1
#                                                     # by default; e.g. the distillation holds core 1)
#
# RUN_DIR (default /work/runs/curve): code/ (benchmarks/freeze_code.py, kept for every resume),
# ours_sSEED/ (`efficientad train` output: train_state.safetensors every 100 steps, curve.json
# per point), anomalib_sSEED/ (benchmarks/anomalib_curve.py: state.pt every 50 steps,
# points/step_NNNNNN.pt; curve.json once scored), ours_sSEED.log, anomalib_sSEED.log.
# PYTHON (default .venv/bin/python, ours), ANOMALIB_PYTHON (default .venv-cuda/bin/python, with
# anomalib 2.7.0: .ci/peers-requirements.txt). On an AVX2-only CPU (1 thread each) ours runs at
# ~4.9-5.9 s/step and anomalib's loop at ~5.8-6.3 s/step (RESULTS.md, sessions 13 to 16): 4,000
# steps take about 6.5 hours a side, over several sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
RUN_DIR="${RUN_DIR:-/work/runs/curve}"
SEED="${SEED:-0}"
STOP="${STOP:-4000}"
EVAL_AT="${EVAL_AT:-300,1000,2000,3000,4000}"
SIDES="${SIDES:-ours anomalib}"
OURS_CORE="${OURS_CORE:-0}"
ANOMALIB_CORE="${ANOMALIB_CORE:-1}"
PY="$REPO/${PYTHON:-.venv/bin/python}"
APY="$REPO/${ANOMALIB_PYTHON:-.venv-cuda/bin/python}"
DATA="${EFFICIENTAD_DATA:-../shared/data}"
[[ -d "$DATA" ]] || { echo "data folder not found: $DATA (set EFFICIENTAD_DATA)" >&2; exit 2; }
DATA="$(realpath "$DATA")"  # absolute: the runs cd to RUN_DIR
SET="$DATA/magnetic-tile"
PENALTY="$DATA/imagenet-samples"
OURS="$RUN_DIR/ours_s$SEED"
THEIRS="$RUN_DIR/anomalib_s$SEED"

if [[ "${1:-}" == score ]]; then
  nice -n 5 "$PY" benchmarks/anomalib_curve.py score "$THEIRS" "$SET" --out "$THEIRS/curve.json"
  "$PY" benchmarks/curve_table.py --side "ours=$OURS/curve.json" --side "anomalib=$THEIRS/curve.json"
  exit 0
fi

[[ -d "$SET/train/good" ]] || { echo "magnetic-tile not found: $SET (set EFFICIENTAD_DATA)" >&2; exit 2; }
[[ -d "$PENALTY" ]] || { echo "penalty images not found: $PENALTY" >&2; exit 2; }
"$APY" -c "import anomalib" 2>/dev/null || {
  echo "anomalib missing in $APY: pip install --no-deps -r .ci/peers-requirements.txt there" >&2
  exit 2
}
mkdir -p "$RUN_DIR"
"$PY" benchmarks/freeze_code.py "$RUN_DIR"
cd "$RUN_DIR"
# The teacher as a path relative to RUN_DIR: anomalib_curve.py refuses a resume whose settings
# (paths as given) differ from the first run's.
TEACHER=code/efficientad_ext/weights/teacher_small.safetensors
export OMP_NUM_THREADS=1

if [[ " $SIDES " != *" ours "* ]]; then
  echo "ours: not started (SIDES=$SIDES)"
elif pgrep -f "efficientad_ext train .*--out $OURS( |$)" >/dev/null; then
  echo "ours: already running into $OURS"
else
  RESUME=()
  [[ -f "$OURS/train_state.safetensors" ]] && RESUME=(--resume)
  echo "=== $(date -u +%FT%TZ) ${RESUME[*]:-start}" >>"$OURS.log"
  nohup nice -n 10 taskset -c "$OURS_CORE" "$PY" code/launch.py -m efficientad_ext train "$SET/train/good" --out "$OURS" \
    --steps 70000 --stop-at "$STOP" --precision float32 --cpu-winograd off --penalty-dir "$PENALTY" --seed "$SEED" \
    --checkpoint-every 100 --eval-dataset "$SET" --eval-at "$EVAL_AT" "${RESUME[@]}" >>"$OURS.log" 2>&1 &
  echo "ours ${RESUME[*]:-started} (pid $!): tail -f $OURS.log"
fi

if [[ " $SIDES " != *" anomalib "* ]]; then
  echo "anomalib: not started (SIDES=$SIDES)"
elif pgrep -f "anomalib_curve.py train .*--out $THEIRS( |$)" >/dev/null; then
  echo "anomalib: already running into $THEIRS"
else
  RESUME=()
  [[ -f "$THEIRS/state.pt" ]] && RESUME=(--resume)
  echo "=== $(date -u +%FT%TZ) ${RESUME[*]:-start}" >>"$THEIRS.log"
  nohup nice -n 10 taskset -c "$ANOMALIB_CORE" "$APY" code/benchmarks/anomalib_curve.py train "$SET" "$PENALTY" "$TEACHER" \
    --out "$THEIRS" --seed "$SEED" --schedule-steps 70000 --stop-at "$STOP" --eval-at "$EVAL_AT" \
    --checkpoint-every 50 "${RESUME[@]}" >>"$THEIRS.log" 2>&1 &
  echo "anomalib ${RESUME[*]:-started} (pid $!): tail -f $THEIRS.log"
fi
