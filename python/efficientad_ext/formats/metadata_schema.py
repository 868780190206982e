"""Typed, ranged parsing of a model file's metadata and validation of its values.

Every metadata field is parsed with its JSON type and range; nothing is coerced (``"no"`` is
not a bool, ``256.7`` is not an int, ``NaN`` is not a bool). Every tensor value a model cannot
work with is refused: non-finite weights or statistics, a teacher std <= 0, quantile pairs
with ``q_a >= q_b`` (the map normalisation divides by ``q_b - q_a``). Failures raise
:class:`FieldError` naming the field and the value; the loader adds the file's path.

Ranges (a file outside them cannot come from our writer):

- ``config.arch``: one of :data:`~efficientad_ext.models.pdn.PDN_ARCHITECTURES`;
- ``config.padded``: ``true`` / ``false``;
- ``config.image_size``: two integers in ``IMAGE_SIZE_RANGE``;
- ``config.teacher_channels``: an integer in ``TEACHER_CHANNELS_RANGE`` (bounds the memory the
  networks are allocated with before the tensors' shapes are compared);
- ``config.image_mean``: three finite numbers in [0, 1] (images are in [0, 1]);
- ``config.image_std``: three finite numbers in ``IMAGE_STD_RANGE``;
- ``calibrated``: ``true`` / ``false``;
- ``training``: an object with ``steps`` (integer >= 0), ``teacher`` and ``penalty_images``
  (strings) and ``extra`` (an object, free-form);
- ``threshold`` (optional): an object with ``value`` (a finite number > 0), ``method`` (one of
  :data:`THRESHOLD_METHODS`) and ``details`` (an object of finite numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.models.autoencoder import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from efficientad_ext.models.efficientad import DecisionThreshold, ModelConfig, TrainingRecord
from efficientad_ext.models.pdn import PDN_ARCHITECTURES

IMAGE_SIZE_RANGE = (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
TEACHER_CHANNELS_RANGE = (1, 4096)
IMAGE_STD_RANGE = (1e-3, 1e3)
# The metadata keys of a model file; any other key is refused (a flipped bit in a key name
# must not turn a field into an ignored one).
MODEL_METADATA_KEYS = frozenset({"format", "format_version", "config", "calibrated", "training", "threshold", "digest"})
THRESHOLD_METHODS = ("normal_holdout_fpr", "f1_labelled")


class FieldError(ValueError):
    """A metadata field or tensor value that is malformed or out of range (the message names it)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(field: str, text: Any, *, allow_nan: bool = False) -> Any:
    """JSON ``text`` of metadata ``field``; NaN / Infinity refused unless ``allow_nan``."""
    if not isinstance(text, str):
        raise FieldError(f"metadata field {field!r} must be a JSON string, got {_show(text)}")
    try:
        return json.loads(text) if allow_nan else json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise FieldError(f"metadata field {field!r} is not valid JSON ({e}): {_show(text)}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_in(field: str, v: Any, lo: int, hi: int) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise FieldError(f"{field} must be an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _bool(field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldError(f"{field} must be true or false, got {_show(v)}")
    return v


def _triple(field: str, v: Any, lo: float, hi: float) -> tuple[float, float, float]:
    if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
        raise FieldError(f"{field} must be a list of 3 numbers (R, G, B), got {_show(v)}")
    if not all(math.isfinite(x) and lo <= x <= hi for x in v):
        raise FieldError(f"{field} values must be finite and in [{lo:g}, {hi:g}], got {_show(v)}")
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def _fields_of(field: str, text: Any, cls: type, allow_nan: bool = False) -> dict[str, Any]:
    """The JSON object in metadata field ``field``, refused when it names a field the dataclass
    ``cls`` does not have."""
    d = parse_json(field, text, allow_nan=allow_nan)
    if not isinstance(d, dict):
        raise FieldError(f"metadata field '{field}' must be a JSON object, got {_show(d)}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise FieldError(f"{field} has unknown fields {unknown} (known: {sorted(known)})")
    return d


def parse_model_config(text: Any) -> ModelConfig:
    d = _fields_of("config", text, ModelConfig)
    missing = sorted(set(ModelConfig.__dataclass_fields__) - set(d))
    if missing:
        raise FieldError(f"config lacks fields {missing}")
    if d["arch"] not in PDN_ARCHITECTURES:
        raise FieldError(f"config.arch must be one of {list(PDN_ARCHITECTURES)}, got {_show(d['arch'])}")
    size = d["image_size"]
    if not isinstance(size, list) or len(size) != 2:
        raise FieldError(f"config.image_size must be [H, W], got {_show(size)}")
    h = _int_in("config.image_size[0]", size[0], *IMAGE_SIZE_RANGE)
    w = _int_in("config.image_size[1]", size[1], *IMAGE_SIZE_RANGE)
    return ModelConfig(
        arch=d["arch"],
        padded=_bool("config.padded", d["padded"]),
        image_size=(h, w),
        teacher_channels=_int_in("config.teacher_channels", d["teacher_channels"], *TEACHER_CHANNELS_RANGE),
        image_mean=_triple("config.image_mean", d["image_mean"], 0.0, 1.0),
        image_std=_triple("config.image_std", d["image_std"], *IMAGE_STD_RANGE),
    )


def parse_training_record(text: Any) -> TrainingRecord:
    # Informational (free-form "extra" may hold any JSON, NaN included); typed all the same.
    d = _fields_of("training", text, TrainingRecord, allow_nan=True)
    record = TrainingRecord()
    if "steps" in d:
        record.steps = _int_in("training.steps", d["steps"], 0, 2**62)
    for key in ("teacher", "penalty_images"):
        if key in d:
            if not isinstance(d[key], str):
                raise FieldError(f"training.{key} must be a string, got {_show(d[key])}")
            setattr(record, key, d[key])
    if "extra" in d:
        if not isinstance(d["extra"], dict):
            raise FieldError(f"training.extra must be an object, got {_show(d['extra'])}")
        record.extra = d["extra"]
    return record


def parse_model_metadata(metadata: Mapping[str, Any]) -> tuple[ModelConfig, bool, TrainingRecord]:
    """(config, calibrated, training record) of a model file's metadata (format and version
    already checked by the caller)."""
    unknown = sorted(set(metadata) - MODEL_METADATA_KEYS)
    if unknown:
        shown = ", ".join(_show(k) for k in unknown[:5])
        raise FieldError(f"unknown metadata fields {shown} (known: {sorted(MODEL_METADATA_KEYS)})")
    if "config" not in metadata:
        raise FieldError("metadata field 'config' is missing")
    config = parse_model_config(metadata["config"])
    calibrated = _bool("metadata field 'calibrated'", parse_json("calibrated", metadata.get("calibrated", "false")))
    record = parse_training_record(metadata.get("training", "{}"))
    return config, calibrated, record


def parse_threshold(metadata: Mapping[str, Any]) -> DecisionThreshold | None:
    """The model's decision threshold, or None when the file has none."""
    if "threshold" not in metadata:
        return None
    d = parse_json("threshold", metadata["threshold"])
    if not isinstance(d, dict) or set(d) != {"value", "method", "details"}:
        raise FieldError(f"metadata field 'threshold' must be an object with value, method and details, got {_show(d)}")
    value = d["value"]
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise FieldError(f"threshold.value must be a finite number > 0, got {_show(value)}")
    if d["method"] not in THRESHOLD_METHODS:
        raise FieldError(f"threshold.method must be one of {list(THRESHOLD_METHODS)}, got {_show(d['method'])}")
    details = d["details"]
    if not isinstance(details, dict) or not all(
        isinstance(k, str) and _is_number(v) and math.isfinite(v) for k, v in details.items()
    ):
        raise FieldError(f"threshold.details must be an object of finite numbers, got {_show(details)}")
    return DecisionThreshold(float(value), d["method"], dict(details))


QUANTILE_NAMES = ("q_st_a", "q_st_b", "q_ae_a", "q_ae_b")


def check_finite(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0, 0])
        raise FieldError(
            f"tensor {name} holds {int(bad.sum())} non-finite values (first at flat index {first}: "
            f"{float(t.reshape(-1)[first])}); a model needs finite weights and statistics"
        )


def check_model_values(tensors: Mapping[str, Tensor]) -> None:
    """Refuses values a model cannot work with (names the tensor, index and value).

    ``tensors``: the model file's tensors by name (all present, shapes already checked)."""
    for name in sorted(tensors):
        check_finite(name, tensors[name])
    std = tensors["teacher_std"].double()
    if bool((std <= 0).any()):
        i = int((std <= 0).nonzero()[0, 0])
        raise FieldError(f"tensor teacher_std[{i}] is {float(std[i]):g}; the teacher's channel std must be > 0")
    q = [float(v) for v in tensors["quantiles"].double()]
    for a, b in ((0, 1), (2, 3)):
        if not q[a] < q[b]:
            raise FieldError(
                f"tensor quantiles: {QUANTILE_NAMES[a]} = {q[a]:g} must be below {QUANTILE_NAMES[b]} = {q[b]:g} "
                "(the maps are normalised by their difference)"
            )
