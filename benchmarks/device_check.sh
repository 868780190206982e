#!/usr/bin/env bash
# The one call for the GPU machine (issue 5): build the extension there, run the CUDA tests,
# run the GPU benchmark table, all inside DEVICE_CHECK_BUDGET_S (default 470 s < 8 min).
#
#   OUT=/some/folder bash benchmarks/device_check.sh            # on the GPU machine, repo root
#   bash benchmarks/device_check.sh --dry-run                   # here: CPU, no build, tiny sizes
#
# Stages run in order, each under its own `timeout` sized from the time left, so a hang in one
# stage still leaves every other stage's log. Logs: $OUT/<stage>.log (env and build_info both in
# info.log); stage results: $OUT/stages.txt; the table: $OUT/gpu_table.md (+ .json). That is 8
# files, the most the device tool brings back. Nothing here downloads anything.
# Environment: PYTHON (default python3), OUT (default: a new temp folder),
# DEVICE_CHECK_BUDGET_S (default 470), EFFICIENTAD_CUDA_ARCHS (default 90),
# GPU_TABLE_ARGS (extra arguments of gpu_table.py, e.g. "--archs small --compile fp16").
set -uo pipefail  # no -e: a failing stage must not stop the others

cd "$(dirname "$0")/.." || exit 2
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: OUT=folder $0 [--dry-run]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t device_check.XXXXXX)}"
mkdir -p "$OUT"
TOTAL="${DEVICE_CHECK_BUDGET_S:-470}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
: >"$OUT/stages.txt"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL - $(elapsed) )); }

# stage NAME CAP_S RESERVE_S CMD...: runs CMD with a timeout of min(CAP_S, time left - RESERVE_S)
# (RESERVE_S: kept for the stages after it), output appended to $OUT/${LOG_AS:-NAME}.log and
# shown on the terminal.
stage() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local limit=$(( $(left) - reserve ))
  (( limit > cap )) && limit=$cap
  if (( limit < 10 )); then
    echo "=== [$(elapsed)s] $name: SKIPPED (only $(left) s left)" | tee -a "$OUT/stages.txt"
    return 0
  fi
  echo "=== [$(elapsed)s] $name (limit ${limit}s): $*"
  local t0
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUT/${LOG_AS:-$name}.log"
  local rc=${PIPESTATUS[0]}
  local how="rc=$rc"
  (( rc == 124 || rc == 137 )) && how="TIMED OUT after ${limit}s"
  echo "=== [$(elapsed)s] $name: $how ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/stages.txt"
  return 0
}

# --------------------------------------------------------------------------------- stages
LOG_AS=info stage env 30 400 bash -c "
  nvidia-smi || echo 'nvidia-smi: not available'
  command -v nvcc >/dev/null && nvcc --version | tail -2 || echo 'nvcc: not on PATH'
  cmake --version 2>/dev/null | head -1
  nproc
  $PY -c 'import sys, torch; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
"

if (( DRY )); then
  echo "=== dry run: no build; testing the installed efficientad_ext with $PY" | tee -a "$OUT/stages.txt"
else
  # --no-build-isolation: build against the machine's own torch (the one that will load it).
  # CMAKE_BUILD_PARALLEL_LEVEL: every core; the build folder stays for a rerun on a warm machine.
  stage build 240 200 env EFFICIENTAD_CUDA=ON EFFICIENTAD_CUDA_ARCHS="${EFFICIENTAD_CUDA_ARCHS:-90}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -v -Cbuild-dir=build/device .
fi

LOG_AS=info stage build_info 60 180 "$PY" -c "
import json, efficientad_ext
info = efficientad_ext.build_info()
print(json.dumps(info, indent=1))
if not info['cuda_available']:
    print('WARNING: no usable CUDA kernels/device: CUDA tests skip and the table runs nothing on a GPU')
"

# pytest-timeout (on the GPU image) stops a single hanging test; the stage timeout stops the rest.
PYTEST_TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_TIMEOUT=(--timeout=90)
PYTEST_PARALLEL=()  # pytest-xdist (on the GPU image): the CPU tests on 8 of its 16 cores
"$PY" -c "import xdist" 2>/dev/null && PYTEST_PARALLEL=(-n 8)
if (( DRY )); then
  stage tests_cuda 120 150 "$PY" -m pytest -q -rs -p no:cacheprovider "${PYTEST_TIMEOUT[@]}" tests -k "cuda"
  # shellcheck disable=SC2086  # GPU_TABLE_ARGS: words on purpose
  stage gpu_table 1800 20 "$PY" benchmarks/gpu_table.py --dry-run --out "$OUT" --budget-s 1500 ${GPU_TABLE_ARGS:-}
else
  stage tests_cuda 120 200 "$PY" -m pytest -q -rs -p no:cacheprovider "${PYTEST_TIMEOUT[@]}" tests -k "cuda" \
    --durations=10
  # The table gets what is left but 60 s (those: the remaining tests); its own budget is 30 s
  # shorter still, so it stops starting jobs in time to print the table.
  table_limit=$(( $(left) - 60 ))
  # shellcheck disable=SC2086  # GPU_TABLE_ARGS: words on purpose
  stage gpu_table "$table_limit" 60 "$PY" benchmarks/gpu_table.py --out "$OUT" --budget-s $(( table_limit - 30 )) \
    ${GPU_TABLE_ARGS:-}
  # Whatever time remains: the rest of the suite on this machine's torch (CPU paths, not slow).
  stage tests_rest 300 5 "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_TIMEOUT[@]}" "${PYTEST_PARALLEL[@]}" tests \
    -k "not cuda" -m "not slow"
fi

echo
echo "================================ summary ($(elapsed) s of ${TOTAL} s)"
cat "$OUT/stages.txt"
if [[ -f "$OUT/gpu_table.md" ]]; then
  echo
  cat "$OUT/gpu_table.md"
else
  echo "no table was written (see $OUT/gpu_table.log)"
fi
echo "logs: $OUT"
