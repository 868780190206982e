"""Loading teacher weights into a :class:`PDN`, from the formats a user may have.

- an efficientad_ext model file (its ``teacher.*`` tensors);
- a safetensors file holding a PDN state dict (``0.weight``, ``0.bias``, ``3.weight``, ...,
  optionally prefixed ``teacher.``), any float dtype;
- a ``.pth`` / ``.pt`` state dict as published by nelson1425/EfficientAD (``torch.save`` of an
  ``nn.Sequential``'s state dict: the same keys), read with ``torch.load(weights_only=True)``
  so that no pickled code can run;
- anomalib's pretrained teachers (``pretrained_teacher_small.pth`` / ``_medium.pth``: keys
  ``conv1.weight`` ... ``conv4.bias`` / ``conv6.bias``, mapped to our indices by
  :mod:`efficientad_ext.anomalib_layout`), also inside a whole anomalib model's state dict
  (``teacher.conv1.weight``, ..., or ``model.teacher.*`` in a Lightning checkpoint).
Every tensor's name and shape is checked against the PDN; anything else is a clear error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from efficientad_ext.formats import anomalib_layout, integrity
from efficientad_ext.formats.atomic import write_atomically
from efficientad_ext.formats.portable_paths import portable_record
from efficientad_ext.formats.state_dict import key_mismatch, read_state_dict, shape_mismatch
from efficientad_ext.models.pdn import PDN

ACCEPTED_LAYOUTS = (
    "a PDN state dict with nn.Sequential keys (0.weight, 0.bias, 3.weight, ...: ours, nelson1425/EfficientAD's), "
    "optionally prefixed teacher.; or anomalib's (conv1.weight ... conv4.bias for small, ... conv6.bias for medium), "
    "optionally prefixed teacher. or model.teacher."
)


# Formats we write that can hold a teacher; they carry an integrity digest.
OUR_FORMATS = ("efficientad_ext.teacher", "efficientad_ext.model")


class TeacherWeightsError(ValueError):
    """Teacher weights that do not fit; the message names the file and the mismatch."""


def _verify_our_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Teacher and model files we write carry an integrity digest: check it (files of other
    tools carry none of ours and are only checked for names and shapes)."""
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") in OUR_FORMATS:
        integrity.verify(tensors, metadata, source=str(path), error=TeacherWeightsError)


def load_teacher_weights(pdn: PDN, path: str | os.PathLike[str]) -> None:
    """Loads teacher weights from ``path`` into ``pdn`` in place (strict names and shapes)."""
    path = Path(path)
    state = read_state_dict(path, TeacherWeightsError, "teacher", torch_suffixes=(".pth", ".pt", ".ckpt"))
    _verify_our_file(path, state)
    for prefix in ("model.teacher.", "teacher."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    file_key = {k: k for k in state}  # our key -> the key as the file names it (for messages)
    anomalib_arch = anomalib_layout.pdn_arch_of_keys(set(state))
    if anomalib_arch is not None:
        if anomalib_arch != pdn.arch:
            raise TeacherWeightsError(f"{path} holds an anomalib {anomalib_arch} PDN, expected a {pdn.arch} PDN")
        key_map = anomalib_layout.pdn_key_map(anomalib_arch)
        state = {ours: state[theirs] for theirs, ours in key_map.items()}
        file_key = {ours: theirs for theirs, ours in key_map.items()}
    expected = pdn.state_dict()
    missing, unexpected = key_mismatch(expected, state)
    if missing or unexpected:
        raise TeacherWeightsError(
            f"{path} does not match a {pdn.arch} PDN with {pdn.out_channels} output channels: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}. Accepted: {ACCEPTED_LAYOUTS}"
        )
    k = shape_mismatch({name: v.shape for name, v in expected.items()}, state)
    if k is not None:
        raise TeacherWeightsError(
            f"{path}: {file_key[k]} has shape {tuple(state[k].shape)}, a {pdn.arch} PDN with {pdn.out_channels} outputs "
            f"needs {tuple(expected[k].shape)}"
        )
    with torch.no_grad():
        pdn.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def save_teacher(teacher: PDN, path: str | os.PathLike[str], record: Any, dtype: torch.dtype = torch.float32) -> Path:
    """Writes the teacher's weights (``dtype``) and a run's record (a dataclass, stored as JSON
    metadata with its absolute paths made relative: :mod:`portable_paths`) as safetensors,
    atomically. The file loads with :func:`load_teacher_weights`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in teacher.state_dict().items()}
    metadata = {
        "format": "efficientad_ext.teacher",
        "format_version": "1",
        "arch": teacher.arch,
        "out_channels": str(teacher.out_channels),
        "record": json.dumps(portable_record(asdict(record))),
    }
    metadata = integrity.with_digest(tensors, metadata)
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
