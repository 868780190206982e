"""The inference API: ``efficientad_ext.load(path)`` then ``efficientad_ext.infer(batch)``."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .checkpoint import load_model
from .model import EfficientAD, InferenceResult

_current: EfficientAD | None = None


def load(path: str | os.PathLike[str], device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> EfficientAD:
    """Loads a model file and makes it the default model of :func:`infer`. ``device`` and
    ``dtype`` (e.g. ``"cuda"``, ``torch.bfloat16``) move it after loading."""
    global _current
    _current = load_model(path, device=device, dtype=dtype)
    return _current


def infer(
    batch: Tensor | Sequence[Any],
    model: EfficientAD | None = None,
    dtype: torch.dtype | str | None = None,
    cuda_graph: bool = True,
) -> InferenceResult:
    """Anomaly maps [B, 1, H, W] (at the input resolution) and scores [B] for ``batch``.

    ``batch``: float tensor in [0, 1] or uint8 tensor, [B, 3, H, W] or [B, H, W, 3], or a list
    of PIL images / numpy arrays. ``model``: defaults to the one set by :func:`load`.
    ``dtype`` / ``cuda_graph``: as :meth:`EfficientAD.infer` (default: bfloat16 on GPUs that
    support it, CUDA-graph replay for repeated batch shapes on the GPU).
    """
    model = model if model is not None else _current
    if model is None:
        raise RuntimeError("no model: call efficientad_ext.load(path) first or pass model=")
    if not isinstance(model, EfficientAD):
        raise TypeError(f"model must be an efficientad_ext.EfficientAD, got {type(model).__name__}")
    return model.infer(batch, dtype=dtype, cuda_graph=cuda_graph)
