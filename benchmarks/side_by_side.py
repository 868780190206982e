"""Ours vs anomalib 2.7's own training at equal steps, several seeds, one machine.

Runs, interleaved by seed (so a stopped run still leaves balanced results):
- ``anomalib``: ``../shared/tools/anomalib_train_loop.py`` (anomalib's ``EfficientAdModel`` with its
  own losses in a minimal loop) in the Python given by ``--anomalib-python``, with our shipped
  teacher, so both sides start from the same teacher;
- ``ours``: ``efficientad_ext`` training (Algorithm 1) with the same teacher, steps, hold-out
  fraction and penalty images, evaluated on the same test set;
- ``ours-float32`` / ``ours-bfloat16``: ours in that precision (``ours`` takes ``auto``: bf16 on
  native-bf16 CPUs), for the precision comparison at equal steps;
- ``ours-winograd``: ours in float32 with the convolutions by Winograd (``--cpu-winograd auto``),
  for the accuracy of that path against ``ours-float32``'s direct convolutions;
- ``ours-old-penalty`` (optional): ours with the penalty images resized to the image size first
  and then up to twice that (the behaviour before the fix), to measure that cause on its own.

Every finished run is appended to ``--out`` (JSON, written atomically), with its seed, the
image AUROC and, for ours, pixel AUROC and AU-PRO.

    python benchmarks/side_by_side.py ../shared/data/magnetic-tile --steps 300 --seeds 0 1 2 \
        --anomalib-python /path/to/venv-with-anomalib/bin/python --out benchmarks/results/side_by_side.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
BRANCHES_TOOL = HERE / "anomalib_loop_branches.py"


def _curve_module():
    """``anomalib_curve.py`` beside this file (by path: a frozen copy runs this file by path too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("anomalib_curve", HERE / "anomalib_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_anomalib(
    python: str,
    dataset: Path,
    penalty: Path,
    steps: int,
    seed: int,
    teacher: Path,
    threads: int,
    branches: bool = False,
) -> dict:
    """anomalib's loop in ``python``; with ``branches``, through :mod:`anomalib_loop_branches`
    (the same loop; its trained model saved, then scored per branch by our evaluator here, so
    ``python`` needs anomalib only)."""
    env = {**os.environ, "SEED": str(seed), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "anomalib_model.pt"
        command = [
            python,
            str(BRANCHES_TOOL if branches else TOOL),
            str(dataset),
            str(penalty),
            str(steps),
            str(teacher),
        ]
        out = subprocess.run(
            command + ([str(saved)] if branches else []), env=env, capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"anomalib run failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
        if branches:
            from efficientad_ext.data import open_dataset

            r = torch.load(saved, map_location="cpu", weights_only=False)
            metrics = _curve_module().score_anomalib_model(r["model"], r["quantiles"], open_dataset(dataset).test)
            return {
                "image_auroc": r["tool_image_auroc"],
                "our_eval_image_auroc": metrics["image_auroc"],
                "seconds_per_step": r["seconds_per_step"],
                **{k: metrics.get(k) for k in ("pixel_auroc", "au_pro", "image_auroc_per_type", "branches")},
                "wall_seconds": round(time.perf_counter() - t0, 1),
            }
    m = re.search(r"([0-9.]+) s/step on CPU: image AUROC ([0-9.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"cannot parse the anomalib tool's output:\n{out.stdout[-2000:]}")
    return {
        "image_auroc": float(m.group(2)),
        "seconds_per_step": float(m.group(1)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "line": out.stdout.strip().splitlines()[-1],
    }


def run_ours(
    dataset: Path,
    penalty: Path,
    steps: int,
    seed: int,
    old_penalty: bool,
    precision: str = "auto",
    cpu_winograd: str = "off",
) -> dict:
    import efficientad_ext.training as training
    from efficientad_ext.data import load_image, open_dataset, resize_image
    from efficientad_ext.evaluation.evaluator import evaluate
    from efficientad_ext.training.augment import penalty_transform

    original = training.penalty_batch
    if old_penalty:

        def blurred(paths, size, generator):
            raw = torch.stack([resize_image(load_image(p), size) for p in paths])
            return penalty_transform(raw, size, generator)

        training.penalty_batch = blurred
    try:
        splits = open_dataset(dataset)
        cfg = training.TrainConfig(
            steps=steps,
            seed=seed,
            penalty_dir=str(penalty),
            log_every=max(1, steps // 4),
            checkpoint_every=steps,
            precision=precision,
            cpu_winograd=cpu_winograd,
        )
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            model = training.train([s.path for s in splits.train], tmp, config=cfg)
            seconds = time.perf_counter() - t0
            metrics = evaluate(model, splits.test, out_dir=None, write_images=False)
    finally:
        training.penalty_batch = original
    extra = model.record.extra or {}
    return {
        "precision": extra.get("precision"),
        "memory_format": extra.get("memory_format"),
        "cpu_winograd": extra.get("cpu_winograd"),
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": metrics.get("pixel_auroc"),
        "au_pro": metrics.get("au_pro"),
        "image_auroc_per_type": metrics.get("image_auroc_per_type"),
        "branches": metrics.get("branches"),
        "seconds_per_step": round(seconds / steps, 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--penalty-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "imagenet-samples")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--sides",
        nargs="+",
        default=["anomalib", "ours"],
        choices=["anomalib", "ours", "ours-float32", "ours-bfloat16", "ours-winograd", "ours-old-penalty"],
        help=(
            "ours: precision auto; ours-float32 / ours-bfloat16: that precision; ours-winograd: float32 "
            "by Winograd; ours-old-penalty: the blurred penalty images"
        ),
    )
    ap.add_argument("--anomalib-python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--branches",
        action="store_true",
        help="score anomalib's trained model with our evaluator too, per branch (benchmarks/anomalib_loop_branches.py saves it)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from efficientad_ext.training.teacher_choice import shipped_teacher

    teacher = shipped_teacher("small")
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    done = {(r["side"], r["seed"], r["steps"]) for r in runs}
    for seed in args.seeds:
        for side in args.sides:
            if (side, seed, args.steps) in done:
                continue
            print(f"=== {side} seed {seed}, {args.steps} steps", flush=True)
            if side == "anomalib":
                r = run_anomalib(
                    args.anomalib_python,
                    args.dataset,
                    args.penalty_dir,
                    args.steps,
                    seed,
                    teacher,
                    args.threads,
                    args.branches,
                )
            else:
                precision = {"ours-float32": "float32", "ours-winograd": "float32", "ours-bfloat16": "bfloat16"}.get(
                    side, "auto"
                )
                r = run_ours(
                    args.dataset,
                    args.penalty_dir,
                    args.steps,
                    seed,
                    old_penalty=side == "ours-old-penalty",
                    precision=precision,
                    cpu_winograd="auto" if side == "ours-winograd" else "off",
                )
            runs.append({"side": side, "seed": seed, "steps": args.steps, **r})
            shown = ", ".join(f"{b} {m['image_auroc']:.4f}" for b, m in (r.get("branches") or {}).items())
            print(f"    image AUROC {r['image_auroc']:.4f}" + (f" (per map: {shown})" if shown else ""), flush=True)
            result = {
                "dataset": str(args.dataset),
                "teacher": str(teacher.name),
                "threads": args.threads,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
                "torch": torch.__version__,
                "runs": runs,
            }
            write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
