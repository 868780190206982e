"""Training speed end to end: the ``efficientad train`` CLI against anomalib 2.7's own loop,
interleaved on one machine (issue 12, item 1).

Each repetition runs, one after the other and in this order, for every precision asked:
``efficientad train DATASET --steps N --precision P`` (a subprocess: image decoding, the
teacher statistics, the penalty images, checkpoints and the calibration all included), then
``../shared/tools/anomalib_train_loop.py DATASET PENALTY N TEACHER`` (anomalib's
``EfficientAdModel`` with its own losses, the same teacher and penalty images). Alternating
keeps slow drifts of a shared machine (other load, clocks) out of the ratio.

Reported per side: the loop's seconds per step (ours: ``training.json``'s ``seconds_per_step``,
the optimisation loop; anomalib: the tool's printed s/step, also its loop) and the whole
process's wall seconds. The JSON (written atomically to ``--out``) carries every repetition,
the medians, the ratios anomalib / ours and the CPU's flags.

    python benchmarks/train_speed_vs_anomalib.py ../shared/data/mvtec-hazelnut-reduced --steps 20 \\
        --reps 2 --threads 2 --anomalib-python /path/to/venv-with-anomalib/bin/python --out speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.training.precision import describe_cpu

HERE = Path(__file__).resolve().parent
TOOL = HERE.parent.parent / "shared" / "tools" / "anomalib_train_loop.py"


VARIANTS = (
    "auto",
    "float32",
    "bfloat16",
    "float32/contiguous",
    "float32/channels_last",
    "bfloat16/contiguous",
    "bfloat16/channels_last",
)


def run_ours(dataset: Path, penalty: Path, steps: int, variant: str, threads: int, seed: int) -> dict:
    """``variant``: a precision, optionally with a memory format ("bfloat16/contiguous"); the
    format is ``auto`` when not named."""
    precision, _, memory_format = variant.partition("/")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "efficientad_ext",
            "train",
            str(dataset),
            "--out",
            tmp,
            "--steps",
            str(steps),
            "--penalty-dir",
            str(penalty),
            "--precision",
            precision,
            "--memory-format",
            memory_format or "auto",
            "--seed",
            str(seed),
            "--device",
            "cpu",
            "--checkpoint-every",
            str(steps),
        ]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"efficientad train failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
        extra = json.loads((Path(tmp) / "training.json").read_text())["extra"]
    return {
        "seconds_per_step": extra["seconds_per_step"],
        "wall_seconds": round(wall, 1),
        "precision": extra["precision"],
        "memory_format": extra.get("memory_format"),
        "teacher_cache": extra.get("teacher_cache"),
    }


def run_anomalib(python: str, dataset: Path, penalty: Path, steps: int, teacher: Path, threads: int, seed: int) -> dict:
    env = {**os.environ, "SEED": str(seed), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [python, str(TOOL), str(dataset), str(penalty), str(steps), str(teacher)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"anomalib run failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    m = re.search(r"([0-9.]+) s/step on CPU", out.stdout)
    if not m:
        raise RuntimeError(f"cannot parse the anomalib tool's output:\n{out.stdout[-2000:]}")
    return {"seconds_per_step": float(m.group(1)), "wall_seconds": round(wall, 1)}


def summarise(reps: list[dict], precisions: list[str]) -> dict:
    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in reps)

    out = {"anomalib": {k: med("anomalib", k) for k in ("seconds_per_step", "wall_seconds")}}
    for p in precisions:
        side = f"ours_{p}"
        out[side] = {k: med(side, k) for k in ("seconds_per_step", "wall_seconds")}
        out[side]["speedup_per_step"] = round(out["anomalib"]["seconds_per_step"] / out[side]["seconds_per_step"], 3)
        out[side]["speedup_wall"] = round(out["anomalib"]["wall_seconds"] / out[side]["wall_seconds"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--penalty-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "imagenet-samples")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["auto"],
        choices=VARIANTS,
        help="our sides: a precision, optionally /memory-format (default auto for both)",
    )
    ap.add_argument("--anomalib-python", default=sys.executable)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not TOOL.is_file():
        raise SystemExit(f"the anomalib loop is missing: {TOOL} (it lives in the shared tools folder)")
    from efficientad_ext.training.teacher_choice import shipped_teacher

    teacher = shipped_teacher("small")
    reps = []
    for rep in range(args.reps):
        row = {}
        for p in args.precisions:
            row[f"ours_{p}"] = run_ours(args.dataset, args.penalty_dir, args.steps, p, args.threads, args.seed)
            print(f"rep {rep} ours {p}: {row[f'ours_{p}']}", flush=True)
        row["anomalib"] = run_anomalib(
            args.anomalib_python, args.dataset, args.penalty_dir, args.steps, teacher, args.threads, args.seed
        )
        print(f"rep {rep} anomalib: {row['anomalib']}", flush=True)
        reps.append(row)
        result = {
            "dataset": str(args.dataset),
            "steps": args.steps,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
            "reps": reps,
            "median": summarise(reps, args.precisions),
        }
        write_text_atomically(args.out, json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
