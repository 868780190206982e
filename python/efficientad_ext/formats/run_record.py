"""``run.json``: how a finished ``infer`` / ``eval`` run is told from an interrupted one.

A run writes ``run.json`` with ``"status": "running"`` before its first output (replacing the
record of any earlier run in that folder) and rewrites it with ``"status": "complete"`` and
its counts as its very last write. Each write is atomic. So:

- ``status == "complete"``: every output the record counts was written completely;
- ``status == "running"`` or no ``run.json``: the run was interrupted (or is still going); the
  folder may hold a complete-looking ``scores.csv`` beside only some of the heatmaps.

The record names the model by the SHA-256 of its file, so outputs can be matched to the exact
model that produced them (``sha256sum model.safetensors`` gives the same value).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from efficientad_ext.formats.atomic import write_text_atomically

RUN_FILE = "run.json"
FORMAT = "efficientad_ext.run"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """The ``run.json`` of one run in ``out_dir``; :meth:`start` first, :meth:`finish` last."""

    def __init__(self, out_dir: str | os.PathLike[str], command: str, model_path: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / RUN_FILE
        self.data: dict[str, Any] = {
            "format": FORMAT,
            "command": command,
            "status": "running",
            "started": _now(),
            "model": str(model_path),
            "model_sha256": file_sha256(model_path),
        }

    def start(self) -> RunRecord:
        write_text_atomically(self.path, json.dumps(self.data, indent=2))
        return self

    def finish(self, **counts: int) -> Path:
        self.data.update(status="complete", finished=_now(), counts=dict(counts))
        return write_text_atomically(self.path, json.dumps(self.data, indent=2))


def read_status(out_dir: str | os.PathLike[str]) -> str:
    """``"complete"``, ``"running"`` (interrupted or still going) or ``"absent"``."""
    path = Path(out_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return "absent"
    status = data.get("status") if isinstance(data, dict) else None
    return status if status in ("complete", "running") else "absent"
