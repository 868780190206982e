#!/usr/bin/env bash
# The one call for the GPU machine (issues 5 and 18): preflight, build the extension there,
# CUDA smoke tests, the GPU benchmark table (with a per-kernel profile), memcheck of the op
# tests, then the remaining CUDA tests, all inside DEVICE_CHECK_BUDGET_S (default 470 s
# < 8 min). No CPU tests run here: CI runs those.
#
#   OUT=/some/folder bash benchmarks/device_check.sh                  # GPU machine, repo root
#   OUT=/some/folder bash benchmarks/device_check.sh --compile-only   # 2nd call, warm machine:
#                                   # the torch.compile row only (S, fp16, batch 1), no build
#   bash benchmarks/device_check.sh --dry-run                         # here: CPU, no build, tiny sizes
#   bash benchmarks/device_check.sh --preflight                       # only the preflight (exit 3 if
#                                   # it fails, with one line saying what is missing)
#
# Stages run in order, each under its own `timeout` sized from the time left, so a hang in one
# stage still leaves every other stage's log. $OUT holds at most 8 files (the most the device
# tool brings back): info.log (env, preflight, build_info), build.log, tests_cuda.log (smoke +
# the rest), memcheck.log, gpu_table.log, stages.txt, gpu_table.md, gpu_table.json. Temporary
# files (*.tmp) are removed after every stage and on exit. Nothing here downloads anything.
# Environment: PYTHON (default python3), OUT (default: a new temp folder),
# DEVICE_CHECK_BUDGET_S (default 470), EFFICIENTAD_CUDA_ARCHS (default 90),
# GPU_TABLE_ARGS (extra arguments of gpu_table.py, e.g. "--archs small").
set -uo pipefail  # no -e: a failing stage must not stop the others

cd "$(dirname "$0")/.." || exit 2
MODE=full
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --compile-only) MODE=compile ;;
  --preflight) MODE=preflight ;;
  "") ;;
  *) echo "usage: OUT=folder $0 [--dry-run | --compile-only | --preflight]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
# The GPU machine's call must end within 8 minutes; a dry run on 2 CPU cores needs longer
# (bf16 convolutions without bf16 units, training steps): 1200 s by default.
# Its stage caps are CAP_SCALE times the GPU machine's (2 loaded cores import torch slowly).
if [[ $MODE == dry ]]; then
  TOTAL="${DEVICE_CHECK_BUDGET_S:-1200}" CAP_SCALE=4
else
  TOTAL="${DEVICE_CHECK_BUDGET_S:-470}" CAP_SCALE=1
fi
MAX_FILES=8
export PYTHONUNBUFFERED=1
START=$(date +%s)
FAILED=0  # stages that did not exit 0 (a dry run fails when any did)

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( TOTAL - $(elapsed) )); }
clean_tmp() { [[ -z "${OUT:-}" ]] || rm -f "$OUT"/*.tmp; }
trap clean_tmp EXIT
trap 'clean_tmp; exit 143' INT TERM

# stage NAME CAP_S RESERVE_S CMD...: runs CMD with a timeout of min(CAP_S, time left - RESERVE_S)
# (RESERVE_S: kept for the stages after it), output appended to $OUT/${LOG_AS:-NAME}.log and
# shown on the terminal.
stage() {
  local name=$1 cap=$(( $2 * CAP_SCALE )) reserve=$3
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
  (( rc != 0 )) && FAILED=$(( FAILED + 1 ))
  clean_tmp  # a killed step must not leave a .tmp behind as a ninth file
  echo "=== [$(elapsed)s] $name: $how ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/stages.txt"
  return 0
}

# ------------------------------------------------------------------------------ preflight
# Prints nothing and returns 0 when the build can start, else ONE line naming what is missing.
preflight() {
  if [[ -n "${CUDACXX:-}" ]]; then
    [[ -x "$CUDACXX" ]] || { echo "CUDACXX=$CUDACXX is not an executable file"; return 1; }
  elif ! command -v nvcc >/dev/null 2>&1; then
    echo "no CUDA compiler: nvcc is not on PATH and CUDACXX is not set"
    return 1
  fi
  # scikit-build-core takes the newest cmake it finds: the cmake PyPI package or PATH's.
  local best="" c v
  for c in "$("$PY" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null)" \
           "$(command -v cmake 2>/dev/null)"; do
    [[ -n "$c" && -x "$c" ]] || continue
    v=$("$c" --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)
    [[ -n "$v" ]] && [[ -z "$best" || "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -1)" == "$v" ]] && best=$v
  done
  [[ -n "$best" ]] || { echo "no cmake: neither the cmake Python package nor cmake on PATH (need >= 3.28)"; return 1; }
  [[ "$(printf '%s\n%s\n' "3.28" "$best" | sort -V | head -1)" == "3.28" ]] ||
    { echo "cmake $best is too old: the build needs cmake >= 3.28 (pip install 'cmake>=3.28')"; return 1; }
  # pyproject.toml's license = "Apache-2.0" is PEP 639: old scikit-build-core / pyproject-metadata reject it.
  "$PY" - <<'EOF' || return 1
import sys, tempfile
try:
    import scikit_build_core
    from scikit_build_core.build import prepare_metadata_for_build_wheel
except Exception as exc:  # noqa: BLE001
    sys.exit(f"scikit-build-core is not importable with {sys.executable}: {exc}")
try:
    with tempfile.TemporaryDirectory() as d:
        prepare_metadata_for_build_wheel(d)
except BaseException as exc:  # noqa: BLE001
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    sys.exit(f"scikit-build-core {scikit_build_core.__version__} cannot read pyproject.toml (PEP 639 "
             f"license = \"Apache-2.0\" needs scikit-build-core >= 0.11): {first}")
EOF
  "$PY" -c 'import os, sys, sysconfig
h = os.path.join(sysconfig.get_paths()["include"], "Python.h")
os.path.exists(h) or sys.exit(f"no Python.h at {h}: install the Python development headers (python3-dev)")' || return 1
  return 0
}

if [[ $MODE == preflight ]]; then
  if why=$(preflight 2>&1); then echo "preflight: ok"; exit 0; fi
  echo "PREFLIGHT FAILED: ${why##*$'\n'}"
  exit 3
fi

OUT="${OUT:-$(mktemp -d -t device_check.XXXXXX)}"
mkdir -p "$OUT"
: >"$OUT/stages.txt"

# --------------------------------------------------------------------------------- stages
LOG_AS=info stage env 30 400 bash -c "
  nvidia-smi || echo 'nvidia-smi: not available'
  command -v nvcc >/dev/null && nvcc --version | tail -2 || echo 'nvcc: not on PATH'
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -1 || echo 'compute-sanitizer: not on PATH'
  cmake --version 2>/dev/null | head -1
  nproc
  $PY -c 'import sys, torch; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
"

if [[ $MODE == full ]]; then
  if ! why=$(preflight 2>&1); then
    echo "PREFLIGHT FAILED: ${why##*$'\n'}" | tee -a "$OUT/stages.txt" "$OUT/info.log"
    exit 3
  fi
  echo "=== [$(elapsed)s] preflight: ok" | tee -a "$OUT/stages.txt"
  # --no-build-isolation: build against the machine's own torch (the one that will load it).
  # CMAKE_BUILD_PARALLEL_LEVEL: every core; the build folder stays for a rerun on a warm machine.
  stage build 200 240 env EFFICIENTAD_CUDA=ON EFFICIENTAD_CUDA_ARCHS="${EFFICIENTAD_CUDA_ARCHS:-90}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -v -Cbuild-dir=build/device .
elif [[ $MODE == dry ]]; then
  # Nothing is built in a dry run: report what the preflight would stop on, and go on.
  if why=$(preflight 2>&1); then res="ok"; else res="would stop the real run: ${why##*$'\n'}"; fi
  echo "=== dry run: preflight $res; no build; testing the installed efficientad_ext with $PY" | tee -a "$OUT/stages.txt"
fi

LOG_AS=info stage build_info 30 200 "$PY" -c "
import json, efficientad_ext
info = efficientad_ext.build_info()
print(json.dumps(info, indent=1))
if not info['cuda_available']:
    print('WARNING: no usable CUDA kernels/device: CUDA tests skip and the table runs nothing on a GPU')
"

# pytest-timeout (on the GPU image) stops a single hanging test; the stage timeout stops the rest.
PYTEST_BASE=("$PY" -m pytest -q -rs -p no:cacheprovider)
PYTEST=("${PYTEST_BASE[@]}")
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=60)
# The CUDA smoke subset: every op once, in small cases (the memcheck cases without the sanitizer).
SMOKE=(tests/test_cuda_memcheck_cases.py tests/test_cuda_quantile.py tests/test_cuda_epilogue.py tests/test_cuda_tf32.py)
IGNORE_SMOKE=()
for f in "${SMOKE[@]}"; do IGNORE_SMOKE+=("--ignore=$f"); done
TABLE=(benchmarks/gpu_table.py --out "$OUT")
[[ $MODE == dry ]] && TABLE+=(--dry-run)
SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)

if [[ $MODE == compile ]]; then
  # Second call on the warm machine (the package is installed): the torch.compile row alone.
  # shellcheck disable=SC2086  # GPU_TABLE_ARGS: words on purpose
  stage gpu_table $(( TOTAL - 40 )) 10 "$PY" "${TABLE[@]}" --jobs compiled --compile fp16 --archs small \
    --budget-s $(( TOTAL - 60 )) ${GPU_TABLE_ARGS:-}
else
  LOG_AS=tests_cuda stage tests_smoke 60 240 "${PYTEST[@]}" -m cuda -x "${SMOKE[@]}" --durations=5
  # The table gets what is left but 135 s (memcheck 75 s, then the remaining CUDA tests); its
  # own budget is 30 s shorter still, so it stops starting jobs in time to print the table.
  # torch.compile: S fp16 batch 1 only, last, skipped when its ~240 s no longer fit (then run
  # --compile-only as a second call).
  table_limit=$(( $(left) - 135 ))
  (( table_limit > 1800 )) && table_limit=1800
  # shellcheck disable=SC2086  # GPU_TABLE_ARGS: words on purpose
  stage gpu_table "$table_limit" 135 "$PY" "${TABLE[@]}" --budget-s $(( table_limit - 30 )) ${GPU_TABLE_ARGS:-}
  if [[ $MODE == dry ]]; then
    stage memcheck 60 60 "${PYTEST_BASE[@]}" -m cuda tests/test_cuda_memcheck_cases.py  # no GPU: no sanitizer
  elif [[ -n "$SANITIZER" ]]; then
    # No caching allocator under the sanitizer: every tensor its own cudaMalloc, so an access
    # past a tensor's end is caught instead of landing in a neighbour inside one cached block.
    # No per-test timeout: CUDA start-up alone is slow under the sanitizer.
    stage memcheck 75 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 99 \
      --print-limit 20 "${PYTEST_BASE[@]}" -m cuda tests/test_cuda_memcheck_cases.py
  else
    echo "=== [$(elapsed)s] memcheck: SKIPPED (compute-sanitizer not found)" | tee -a "$OUT/stages.txt"
  fi
  LOG_AS=tests_cuda stage tests_cuda_rest 300 5 "${PYTEST[@]}" -m "cuda and not slow" tests "${IGNORE_SMOKE[@]}" \
    --durations=10
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
clean_tmp
nfiles=$(find "$OUT" -type f | wc -l)
echo "logs: $OUT ($nfiles files)"
if (( nfiles > MAX_FILES )); then
  echo "ERROR: $nfiles files in $OUT, more than the $MAX_FILES the device tool brings back:" >&2
  find "$OUT" -type f >&2
  exit 4
fi
if [[ $MODE == dry ]] && (( FAILED > 0 )); then
  echo "dry run: $FAILED stage(s) failed" >&2
  exit 1
fi
