"""Which teacher a training run uses: the teacher shipped with the package (the default), a
user's weight file, or an explicitly requested random initialisation.

The shipped teacher was distilled by this project's own ``efficientad distill`` (Algorithm 3,
MobileNetV2 extractor, ImageNet sample images); its provenance is in ``weights/TEACHER_CARD.md``
and in the file's metadata.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# (arch, output channels) -> file in WEIGHTS_DIR
SHIPPED_TEACHERS = {("small", 384): "teacher_small.safetensors"}
RANDOM = "random"
DEFAULT = "default"


@dataclass(frozen=True)
class TeacherChoice:
    """``path`` None means a random initialisation; ``description`` goes into the model's record."""

    path: Path | None
    description: str


def shipped_teacher(arch: str, out_channels: int = 384) -> Path | None:
    """The shipped teacher for this architecture, or None when the package has none."""
    name = SHIPPED_TEACHERS.get((arch, out_channels))
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None


def _short_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolve_teacher(teacher: str | os.PathLike[str] | None, arch: str, out_channels: int = 384) -> TeacherChoice:
    """``teacher``: None or "default" (the shipped teacher; a random one, loudly, when the
    package ships none for ``arch``), "random", or a weight file path.

    Raises:
        FileNotFoundError: "default" was asked for explicitly and no shipped teacher exists,
            or the path does not exist.
    """
    if teacher is not None and str(teacher) == RANDOM:
        return TeacherChoice(None, "random initialisation (requested)")
    if teacher is None or str(teacher) == DEFAULT:
        path = shipped_teacher(arch, out_channels)
        if path is None:
            if teacher is not None:
                raise FileNotFoundError(
                    f"this package ships no teacher for arch {arch!r} with {out_channels} channels "
                    f"(shipped: {sorted(SHIPPED_TEACHERS)}); distil one with `efficientad distill --arch {arch}` "
                    "and pass it with --teacher"
                )
            return TeacherChoice(None, "random initialisation (no shipped teacher for this architecture)")
        return TeacherChoice(path, f"shipped {path.name} (sha256 {_short_sha256(path)}; see weights/TEACHER_CARD.md)")
    path = Path(teacher)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    return TeacherChoice(path, f"{path} (sha256 {_short_sha256(path)})")
