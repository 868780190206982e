"""Absolute paths never travel in a model or teacher file's metadata (formats/portable_paths.py)."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from corruption_probe import tiny_model
from efficientad_ext import load_model, save_model
from efficientad_ext.distillation.config import DistillRecord
from efficientad_ext.formats.portable_paths import portable_path, portable_record, portable_text
from efficientad_ext.formats.teacher_file import load_teacher_weights, save_teacher
from efficientad_ext.models.pdn import build_pdn

CWD = "/home/alice/projects/efficientad"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/home/alice/projects/efficientad/data/tile", "data/tile"),  # under the working directory
        ("/home/alice/projects/shared/data/imagenet", "../shared/data/imagenet"),  # one level up
        ("/home/alice/data/imagenet", "../../data/imagenet"),  # two levels up: still relative
        ("/mnt/nas/factory7/line3/images/train", "images/train"),  # farther: its last two parts
        ("/data", "data"),
        ("/", "."),
        ("data/tile", "data/tile"),  # relative paths are kept as given
        ("../x", "../x"),
        (r"C:\Users\alice\data\tile", "data/tile"),  # a Windows path recorded on Linux
    ],
)
def test_portable_path_rule(path, expected):
    assert portable_path(path, CWD) == expected


def test_portable_text_rewrites_only_the_absolute_words():
    cmd = "efficientad distill --images /mnt/nas/a/imgs --out=/home/alice/projects/efficientad/t  --steps 6000"
    assert portable_text(cmd, CWD) == "efficientad distill --images a/imgs --out=t  --steps 6000"
    assert portable_text("shipped teacher_small.safetensors (sha256 0f42)", CWD) == (
        "shipped teacher_small.safetensors (sha256 0f42)"
    )
    assert portable_text("/srv/w/teacher.safetensors (sha256 ab12)", CWD) == "w/teacher.safetensors (sha256 ab12)"
    assert portable_text("a=/x/y/z", CWD) == "a=/x/y/z"  # not an option: kept, it is not a path word


def test_portable_record_walks_nested_values_and_keeps_the_rest():
    record = {"config": {"extractor_weights": "/opt/w/lite0.pth", "steps": 6000, "scale": (0.25, 1.0)}, "x": None}
    assert portable_record(record, CWD) == {
        "config": {"extractor_weights": "w/lite0.pth", "steps": 6000, "scale": [0.25, 1.0]},
        "x": None,
    }


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_model_file_records_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_model()
    model.record.penalty_images = str(tmp_path / "imagenet")
    model.record.teacher = f"{tmp_path / 'teacher.safetensors'} (sha256 0123456789abcdef)"
    model.record.extra = {"train_config": {"penalty_dir": str(tmp_path / "imagenet"), "steps": 3}}
    path = save_model(model, tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        training = json.loads(f.metadata()["training"])
    assert training["penalty_images"] == "imagenet"
    assert training["teacher"] == "teacher.safetensors (sha256 0123456789abcdef)"
    assert training["extra"]["train_config"] == {"penalty_dir": "imagenet", "steps": 3}
    assert not any(w.startswith("/") for s in _strings(training) for w in s.split())
    loaded = load_model(path)  # the digest covers the rewritten metadata
    assert loaded.record.penalty_images == "imagenet"
    assert model.record.penalty_images == str(tmp_path / "imagenet")  # the model in memory is untouched


def test_teacher_file_records_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    record = DistillRecord(
        config={"extractor_weights": str(tmp_path / "w.pth")},
        images=str(tmp_path / "imgs"),
        train_images=3,
        holdout_images=1,
        command=f"/venv/bin/efficientad distill --images {tmp_path / 'imgs'} --out {tmp_path / 't'}",
    )
    path = save_teacher(build_pdn("small", 384, padded=True), tmp_path / "teacher.safetensors", record)
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["record"])
    here = tmp_path.name
    assert stored["images"] == f"{here}/imgs" and stored["config"]["extractor_weights"] == f"{here}/w.pth"
    assert stored["command"] == f"bin/efficientad distill --images {here}/imgs --out {here}/t"
    load_teacher_weights(build_pdn("small", 384, padded=True), path)  # still a valid, verified file
