"""The model file: one safetensors file holding everything inference needs.

Tensors: the weights of teacher, student and autoencoder (``teacher.*``, ``student.*``,
``autoencoder.*``), ``teacher_mean``, ``teacher_std`` and ``quantiles``. Metadata (JSON in the
safetensors header): format name and version, the :class:`ModelConfig` (architecture, padding,
image size, input normalisation), whether the quantiles were calibrated, the decision
threshold and how it was chosen (when the model has one), how the model was trained (its
absolute paths made relative, :mod:`efficientad_ext.formats.portable_paths`), and an
integrity digest of all of it (:mod:`efficientad_ext.integrity`). No
pickle anywhere: loading a file cannot run code. Loading checks the digest, parses every
metadata field with its type and range and refuses values a model cannot work with
(:mod:`efficientad_ext.metadata_schema`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from efficientad_ext.formats import integrity, metadata_schema
from efficientad_ext.formats.atomic import write_atomically
from efficientad_ext.formats.portable_paths import portable_record
from efficientad_ext.formats.state_dict import tensor_mismatch
from efficientad_ext.models.efficientad import EfficientAD

FORMAT_NAME = "efficientad_ext.model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


def save_model(model: EfficientAD, path: str | os.PathLike[str]) -> Path:
    """Writes ``model`` to ``path`` (a .safetensors file) atomically, with its integrity
    digest. Raises ValueError, writing nothing, for values the loader would refuse."""
    from safetensors.torch import save_file

    tensors = {}
    for prefix, module in (("teacher", model.teacher), ("student", model.student), ("autoencoder", model.autoencoder)):
        for name, value in module.state_dict().items():
            tensors[f"{prefix}.{name}"] = value.detach().to("cpu").contiguous()
    for name in ("teacher_mean", "teacher_std", "quantiles"):
        tensors[name] = getattr(model, name).detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "calibrated": json.dumps(bool(model.calibrated)),
        "training": json.dumps(portable_record(asdict(model.record))),  # no absolute paths travel
    }
    if model.threshold is not None:
        metadata["threshold"] = json.dumps(asdict(model.threshold))
    try:  # never write a file that load_model would refuse
        metadata_schema.parse_model_metadata(metadata)
        metadata_schema.parse_threshold(metadata)
        metadata_schema.check_model_values(tensors)
    except metadata_schema.FieldError as e:
        raise ValueError(f"cannot save the model to {path}: {e}") from None
    metadata = integrity.with_digest(tensors, metadata)
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def model_digest(path: str | os.PathLike[str]) -> str | None:
    """The integrity digest a model file's header records (None when it has none); reads
    only the header. The digest is checked by :func:`load_model`, not here."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return (f.metadata() or {}).get(integrity.DIGEST_KEY)


def _read_checked_metadata(path: Path, allow_unverified: bool):
    """The file's tensors and parsed metadata: format, version, digest and every field checked."""
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable efficientad_ext model file (safetensors): {e}") from None
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is a safetensors file but not an efficientad_ext model (format {metadata.get('format')!r})"
        )
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{path} has model format version {version}, this efficientad_ext reads version {FORMAT_VERSION}"
        )
    way_in = "load_model(..., allow_unverified=True) (CLI: --allow-unverified)"
    integrity.verify(
        tensors, metadata, source=str(path), error=ModelFileError, allow_unverified=allow_unverified, way_in=way_in
    )
    try:
        config, calibrated, record = metadata_schema.parse_model_metadata(metadata)
        threshold = metadata_schema.parse_threshold(metadata)
    except metadata_schema.FieldError as e:
        raise ModelFileError(f"{path} has corrupt metadata: {e}") from None

    return tensors, config, calibrated, record, threshold


def _model_for(path: Path, config, tensors: dict[str, torch.Tensor]) -> EfficientAD:
    """A new model of ``config`` once ``tensors`` are shown to be exactly its tensors (names,
    shapes, floating point, finite and in range)."""
    try:
        model = EfficientAD(config)
    except (RuntimeError, TypeError, ValueError) as e:  # ranges checked above; kept as a backstop
        raise ModelFileError(f"{path}: cannot build the model its config {config} describes: {e}") from None
    expected = {
        f"{p}.{k}": v for p in ("teacher", "student", "autoencoder") for k, v in getattr(model, p).state_dict().items()
    }
    for name in ("teacher_mean", "teacher_std", "quantiles"):
        expected[name] = getattr(model, name)
    problem = tensor_mismatch({k: v.shape for k, v in expected.items()}, tensors)
    if problem is not None:
        raise ModelFileError(f"{path} does not match its own config {config}: tensor {problem}")
    try:
        metadata_schema.check_model_values(tensors)
    except metadata_schema.FieldError as e:
        raise ModelFileError(f"{path}: {e}") from None
    return model


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    allow_unverified: bool = False,
) -> EfficientAD:
    """Reads a model file written by :func:`save_model`; checks format, version, the integrity
    digest (a file without one is refused unless ``allow_unverified``; then it loads after one
    :class:`~efficientad_ext.formats.integrity.UnverifiedFileWarning`), every metadata field's type and
    range, every tensor's name, shape and values. Raises :class:`ModelFileError` (or
    FileNotFoundError) with the file's path and what is wrong."""
    path = Path(path)
    tensors, config, calibrated, record, threshold = _read_checked_metadata(path, allow_unverified)
    model = _model_for(path, config, tensors)
    with torch.no_grad():
        for prefix in ("teacher", "student", "autoencoder"):
            getattr(model, prefix).load_state_dict(
                {k[len(prefix) + 1 :]: v.float() for k, v in tensors.items() if k.startswith(prefix + ".")}, strict=True
            )
        for name in ("teacher_mean", "teacher_std", "quantiles"):
            getattr(model, name).copy_(tensors[name])
    model.calibrated = calibrated
    model.threshold = threshold
    model.record = record
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
