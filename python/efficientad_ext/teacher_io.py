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

import os
from pathlib import Path

import torch
from torch import Tensor

from . import anomalib_layout, integrity
from .pdn import PDN

ACCEPTED_LAYOUTS = (
    "a PDN state dict with nn.Sequential keys (0.weight, 0.bias, 3.weight, ...: ours, nelson1425/EfficientAD's), "
    "optionally prefixed teacher.; or anomalib's (conv1.weight ... conv4.bias for small, ... conv6.bias for medium), "
    "optionally prefixed teacher. or model.teacher."
)


# Formats we write that can hold a teacher; they carry an integrity digest.
OUR_FORMATS = ("efficientad_ext.teacher", "efficientad_ext.model")


class TeacherWeightsError(ValueError):
    """Teacher weights that do not fit; the message names the file and the mismatch."""


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise TeacherWeightsError(f"{path} is not a readable safetensors file: {e}") from None
        if metadata.get("format") in OUR_FORMATS:  # files of other tools carry no digest of ours
            integrity.verify(tensors, metadata, source=str(path), error=TeacherWeightsError)
        return tensors
    if path.suffix in (".pth", ".pt", ".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
            raise TeacherWeightsError(f"{path} could not be read as a weights-only torch file: {e}") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise TeacherWeightsError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__})")
        return dict(obj)
    raise TeacherWeightsError(f"{path}: unsupported teacher file type {path.suffix!r} (expected .safetensors, .pth or .pt)")


def load_teacher_weights(pdn: PDN, path: str | os.PathLike[str]) -> None:
    """Loads teacher weights from ``path`` into ``pdn`` in place (strict names and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    state = _read_state_dict(path)
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
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TeacherWeightsError(
            f"{path} does not match a {pdn.arch} PDN with {pdn.out_channels} output channels: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}. Accepted: {ACCEPTED_LAYOUTS}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise TeacherWeightsError(
                f"{path}: {file_key[k]} has shape {tuple(v.shape)}, a {pdn.arch} PDN with {pdn.out_channels} outputs "
                f"needs {tuple(expected[k].shape)}"
            )
    with torch.no_grad():
        pdn.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
