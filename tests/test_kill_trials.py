"""kill -9 trials on `efficientad train`, `eval` and `infer`: each run is killed mid-write, then
run again in the same folder. The rerun removes the temporary files the killed run left,
finishes, and (train) resumes bit-exactly; `run.json` tells the interrupted run from the
finished one. Small on purpose: a few seconds of work per command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.formats.run_record import read_status
from efficientad_ext.formats.stale_files import is_our_temp_file, remove_stale_temp_files

CLI = [sys.executable, "-c", "import sys; from efficientad_ext.cli import main; sys.exit(main())"]
TRAIN = ["--steps", "3", "--checkpoint-every", "1", "--validation-fraction", "0.25", "--teacher", "random"]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_our_temp_file(p.name)]


def run(args: list[str]) -> None:
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_when(args: list[str], condition: Callable[[], bool], timeout: float = 600) -> bool:
    """Starts the CLI and SIGKILLs it as soon as ``condition()`` holds (polled every ~2 ms);
    returns whether it was killed (False: it finished first)."""
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        assert proc.poll() is not None, "the command did not finish in time"
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("kill") / "data", n_train=4, n_test_good=3, n_test_defect=5, seed=3
    )


def _tensors(path: Path):
    from safetensors.torch import load_file

    return load_file(path)


def test_stale_temp_files_of_our_naming_only_are_removed(tmp_path):
    ours = [
        ".model.safetensors.abc_12x9.tmp",
        ".scores.csv.k2j3h4g5.tmp",
        ".000.png.zzzzzzzz.tmp",
        ".run.json.a1b2c3d4.tmp",
    ]
    theirs = [
        ".notes.txt.abcdefgh.tmp",
        "model.safetensors.abcdefgh.tmp",
        ".model.safetensors.short.tmp",
        "keep.png",
        ".hidden",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.png.abcdefgh.tmp").mkdir()  # not a regular file: kept
    removed = remove_stale_temp_files([tmp_path, tmp_path / "missing"])
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + [".dir.png.abcdefgh.tmp"])


def test_train_killed_while_writing_its_state_resumes_bit_exactly(data, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run(["train", str(data), "--out", str(reference)] + TRAIN)
    # Kill while a training state is being written (its temporary file exists).
    state_tmp = lambda: any(p.name.startswith(".train_state.safetensors.") for p in killed.glob(".*.tmp"))  # noqa: E731
    was_killed = kill_when(["train", str(data), "--out", str(killed)] + TRAIN, state_tmp)
    assert was_killed, "training finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    leftovers = temp_files(killed)
    resume = ["--resume"] if (killed / "train_state.safetensors").exists() else []
    run(["train", str(data), "--out", str(killed)] + TRAIN + resume)
    assert not temp_files(killed), f"left: {temp_files(killed)} (before the rerun: {leftovers})"
    a, b = _tensors(reference / "model.safetensors"), _tensors(killed / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_eval_and_infer_killed_mid_output_are_marked_and_rerun_cleanly(data, tmp_path):
    model_dir = tmp_path / "model"
    run(["train", str(data), "--out", str(model_dir)] + TRAIN)
    model = model_dir / "model.safetensors"

    # eval: killed once a heatmap exists (mid-way through the images), before metrics.json.
    out = tmp_path / "eval"

    def pngs() -> bool:
        return any(out.glob("images/*/*.png")) or any(temp_files(out / "images") if (out / "images").exists() else [])

    assert kill_when(["eval", str(model), str(data), "--out", str(out)], pngs)
    assert read_status(out) == "running" and not (out / "metrics.json").exists()
    run(["eval", str(model), str(data), "--out", str(out)])
    assert read_status(out) == "complete" and not temp_files(out)
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["images"] == 8 and len(list(out.glob("images/*/*.png"))) == 8

    # infer: 24 images, killed after the first heatmaps; scores.csv is written after them.
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    out = tmp_path / "infer"
    heatmaps = lambda: len(list((out / "heatmaps").glob("*.png"))) >= 3 if (out / "heatmaps").exists() else False  # noqa: E731
    assert kill_when(["infer", str(model), str(images), "--out", str(out), "--batch-size", "2"], heatmaps)
    assert read_status(out) == "running" and not (out / "scores.csv").exists()
    (out / "heatmaps" / ".007.png.abcdefgh.tmp").write_bytes(b"partial")  # as a kill mid-PNG leaves
    run(["infer", str(model), str(images), "--out", str(out), "--batch-size", "2"])
    assert read_status(out) == "complete" and not temp_files(out)
    record = json.loads((out / "run.json").read_text())
    assert record["counts"] == {"images": 24, "scored": 24, "skipped": 0, "heatmaps": 24, "broken_links": 0}
    assert (
        len((out / "scores.csv").read_text().splitlines()) == 25 and len(list((out / "heatmaps").glob("*.png"))) == 24
    )
    import hashlib

    assert record["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
