"""benchmarks/teacher_watch.py: each snapshot of a distillation measured once, resumably."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.distillation.config import DistillRecord, snapshot_name
from efficientad_ext.formats.teacher_file import save_teacher
from efficientad_ext.models.pdn import build_pdn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_watch.py"


def _snapshot(out: Path, step: int) -> None:
    torch.manual_seed(step)
    record = DistillRecord(config={}, images="imgs", train_images=2, holdout_images=1, steps_done=step)
    save_teacher(build_pdn("small", 384, padded=True), out / "snapshots" / snapshot_name(step), record)


def _watch(distill_out: Path, data: Path, results: Path, *extra: str) -> str:
    cmd = [sys.executable, str(SCRIPT), str(distill_out), str(data), "--out", str(results), "--once", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_each_snapshot_is_measured_once_and_a_student_is_trained_on_it(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=3, seed=1)
    out, results = tmp_path / "distill", tmp_path / "watch.json"
    _snapshot(out, 1000)
    _watch(out, data, results, "--student-steps", "1")
    first = json.loads(results.read_text())["snapshots"]
    assert [e["step"] for e in first] == [1000]
    q, s = first[0]["quality"], first[0]["student"]
    assert 0.0 <= q["image_auroc_mean"] <= 1.0 and 0.0 <= q["pixel_auroc_mean"] <= 1.0
    assert s["steps"] == 1 and 0.0 <= s["image_auroc"] <= 1.0 and set(s["branches"]) == {"local", "global", "combined"}
    _snapshot(out, 2000)
    printed = _watch(out, data, results, "--skip-student")  # only the new one is measured
    assert "step 1000" not in printed and "step 2000" in printed
    entries = json.loads(results.read_text())["snapshots"]
    assert [e["step"] for e in entries] == [1000, 2000] and entries[0] == first[0] and "student" not in entries[1]


def test_only_the_asked_steps_are_measured(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=3, seed=1)
    out, results = tmp_path / "distill", tmp_path / "watch.json"
    for step in (1000, 2000, 3000):
        _snapshot(out, step)
    # Without --once it would poll for the final teacher; with --steps it stops once they are measured.
    cmd = [sys.executable, str(SCRIPT), str(out), str(data), "--out", str(results), "--skip-student"]
    subprocess.run(
        [*cmd, "--steps", "3000", "2000", "--poll", "3600"], capture_output=True, text=True, check=True, timeout=600
    )
    assert sorted(e["step"] for e in json.loads(results.read_text())["snapshots"]) == [2000, 3000]
