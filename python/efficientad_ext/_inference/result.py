"""What inference returns (here, so the engine needs nothing from the model module)."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class InferenceResult(NamedTuple):
    """``anomaly_map`` [B, 1, H, W] at the input resolution and ``score`` [B]."""

    anomaly_map: Tensor
    score: Tensor
