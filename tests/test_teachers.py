"""Which teacher training uses: the shipped one by default, "random" on request, a file."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

import efficientad_ext.training.teacher_choice as teachers
from efficientad_ext.formats.teacher_file import load_teacher_weights
from efficientad_ext.models.pdn import build_pdn


def test_the_shipped_small_teacher_exists_loads_and_is_documented():
    path = teachers.shipped_teacher("small")
    assert path is not None, "the package must ship weights/teacher_small.safetensors"
    pdn = build_pdn("small", 384)
    load_teacher_weights(pdn, path)
    assert all(torch.isfinite(p).all() for p in pdn.parameters())
    assert path.stat().st_size < 8_000_000
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys())
        record = json.loads(f.metadata()["record"])
    card = (teachers.WEIGHTS_DIR / "TEACHER_CARD.md").read_text()
    # The card states the run's facts as recorded in the file itself, the file's own digest,
    # and names no absolute path of the machine it was built on.
    assert str(record["steps_done"]) in card.replace(",", "")
    assert hashlib.sha256(path.read_bytes()).hexdigest() in card
    assert not re.search(r"(?<![\w.])/(work|tmp|home|root|mnt|opt)/", card)
    command = next(line for line in card.splitlines() if line.startswith("efficientad distill "))
    recorded = record["command"].split()
    assert len(command.split()) == len(recorded)
    for shown, original in zip(command.split(), recorded):  # equal, or the same path made relative
        assert shown == original or (
            original.startswith("/")
            and not shown.startswith("/")
            and Path(shown).parts[-2:] == Path(original).parts[-2:]
        ), (shown, original)
    assert record["config"]["extractor"] == "mobilenet_v2"
    # It is the distilled network, not a fresh initialisation: its weights differ from a
    # random PDN's by far more than float16 rounding, and it still maps 256x256 to 56x56.
    fresh = build_pdn("small", 384)
    assert (pdn[0].weight - fresh[0].weight).abs().max() > 1e-2
    with torch.no_grad():
        assert pdn(torch.rand(1, 3, 256, 256)).shape == (1, 384, 56, 56)


def test_resolve_teacher_choices(tmp_path, monkeypatch):
    assert teachers.resolve_teacher("random", "small").path is None
    default = teachers.resolve_teacher(None, "small")
    assert default.path == teachers.shipped_teacher("small") and "shipped" in default.description
    assert teachers.resolve_teacher("default", "small").path == default.path
    # Medium: no shipped teacher. Implicit default -> random (said in the description); explicit -> error.
    medium = teachers.resolve_teacher(None, "medium")
    assert medium.path is None and "no shipped teacher" in medium.description
    with pytest.raises(FileNotFoundError, match="ships no teacher for arch 'medium'"):
        teachers.resolve_teacher("default", "medium")
    with pytest.raises(FileNotFoundError, match="teacher weights not found"):
        teachers.resolve_teacher(tmp_path / "none.safetensors", "small")
    f = tmp_path / "t.pth"
    torch.save(build_pdn("small", 384).state_dict(), f)
    chosen = teachers.resolve_teacher(f, "small")
    assert chosen.path == f and "sha256" in chosen.description
    # A package without its weights file falls back loudly instead of crashing.
    monkeypatch.setattr(teachers, "WEIGHTS_DIR", tmp_path / "empty")
    assert teachers.resolve_teacher(None, "small").path is None
