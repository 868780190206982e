"""Measure a distillation's teacher snapshots as they appear (issue #25, item 2).

``efficientad distill --snapshot-every 1000`` keeps the teacher at every 1,000 steps in
``OUT/snapshots/``. This measures each new snapshot twice, one after the other, and appends
the results to ``--out`` (JSON, written atomically after each measurement, so a stopped watch
resumes where it was and never measures a snapshot twice):

- ``quality``: ``teacher_quality.py`` (PatchCore's protocol: a 1% coreset of all training patches;
  image and pixel AUROC of nearest-neighbour distances) on the labelled set;
- ``student``: ``efficientad train`` on that set with the snapshot as teacher (``--student-steps``,
  the paper's other settings, ``--penalty-dir``), then ``efficientad eval``: image / pixel AUROC,
  AU-PRO and each map on its own.

Run it beside the distillation, on the other core (each measurement takes tens of minutes):

    python benchmarks/teacher_watch.py /work/runs/teacher/lite0_s ../shared/data/magnetic-tile \\
        --penalty-dir ../shared/data/imagenet-samples --out /work/runs/teacher/watch.json

It polls for new snapshots until the distillation has written its final teacher and every
snapshot is measured (``--once``: measure what is there now and stop). Started from a frozen
copy (``benchmarks/freeze_code.py``), its measurements run that copy too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SNAPSHOT = re.compile(r"teacher_step(\d+)\.safetensors$")


def python_command() -> list[str]:
    """This Python, through the frozen copy's launcher when this script is part of one."""
    launcher = HERE.parent / "launch.py"
    return [sys.executable, str(launcher)] if launcher.is_file() else [sys.executable]


def snapshots(distill_out: Path) -> dict[int, Path]:
    found = {}
    for p in (distill_out / "snapshots").glob("teacher_step*.safetensors"):
        m = SNAPSHOT.search(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _run(what: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (rc {done.returncode}); its output is in {log}")


def measure_quality(snapshot: Path, dataset: Path, work: Path, env: dict[str, str]) -> dict:
    out = work / "quality.json"
    cmd = [*python_command(), str(HERE / "teacher_quality.py"), str(dataset), "--teacher", str(snapshot)]
    _run("teacher_quality.py", [*cmd, "--out", str(out)], env, work / "quality.log")
    row = json.loads(out.read_text())["rows"][0]
    return {k: row[k] for k in row if k.startswith(("image_auroc", "pixel_auroc")) or k == "seconds"}


def measure_student(snapshot: Path, dataset: Path, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    cli = [*python_command(), "-m", "efficientad_ext"]
    train = [*cli, "train", str(dataset), "--out", str(work / "student"), "--steps", str(args.student_steps)]
    train += ["--teacher", str(snapshot), "--seed", str(args.student_seed), "--checkpoint-every", str(10**9)]
    if args.penalty_dir is not None:
        train += ["--penalty-dir", str(args.penalty_dir)]
    _run("efficientad train", train, env, work / "student.log")
    model = work / "student" / "model.safetensors"
    evaluate = [*cli, "eval", str(model), str(dataset), "--out", str(work / "eval"), "--no-images"]
    _run("efficientad eval", evaluate, env, work / "student.log")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    training = json.loads((work / "student" / "training.json").read_text())
    return {
        "steps": args.student_steps,
        "seed": args.student_seed,
        "precision": training["extra"].get("precision"),
        "seconds_per_step": training["extra"].get("seconds_per_step"),
        **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro", "branches")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("distill_out", type=Path, help="the distillation's --out folder (its snapshots/ are read)")
    ap.add_argument("dataset", type=Path, help="labelled MVTec-layout set (e.g. magnetic-tile)")
    ap.add_argument("--penalty-dir", type=Path, help="ImageNet(-like) images for the students' penalty")
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--student-seed", type=int, default=0)
    ap.add_argument("--skip-student", action="store_true", help="only the teacher-quality measure")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measurements")
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between looks for new snapshots")
    ap.add_argument("--once", action="store_true", help="measure the snapshots there now, then stop")
    ap.add_argument(
        "--steps",
        type=int,
        nargs="+",
        help="measure only the snapshots of these distillation steps (default: every one), e.g. when a "
        "session has time for a few points only",
    )
    ap.add_argument("--out", type=Path, required=True, help="results JSON (appended to; resumes)")
    args = ap.parse_args(argv)
    from efficientad_ext.formats.atomic import write_text_atomically
    from efficientad_ext.training.precision import describe_cpu

    if not args.distill_out.is_dir():
        raise SystemExit(f"distillation folder not found: {args.distill_out}")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"snapshots": []}
    results.update(dataset=str(args.dataset), cpu_flags=describe_cpu(), student_steps=args.student_steps)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    while True:
        done = {r["step"] for r in results["snapshots"]}
        todo = [
            (s, p)
            for s, p in snapshots(args.distill_out).items()
            if s not in done and (args.steps is None or s in args.steps)
        ]
        for step, path in todo:
            work = args.out.parent / f"{args.out.stem}_step{step:06d}"
            work.mkdir(parents=True, exist_ok=True)
            print(f"=== snapshot at distillation step {step}: {path}", flush=True)
            entry: dict = {
                "step": step,
                "teacher": str(path),
                "quality": measure_quality(path, args.dataset, work, env),
            }
            print(f"    quality: {entry['quality']}", flush=True)
            if not args.skip_student:
                entry["student"] = measure_student(path, args.dataset, args, work, env)
                print(f"    student: image AUROC {entry['student']['image_auroc']:.4f}", flush=True)
            results["snapshots"].append(entry)
            write_text_atomically(args.out, json.dumps(results, indent=2))
        finished = (args.distill_out / "teacher.safetensors").is_file()
        asked_done = args.steps is not None and set(args.steps) <= {r["step"] for r in results["snapshots"]}
        if args.once or asked_done or (finished and not todo):
            return 0
        time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
