"""Range checks on image batches given as floats.

Float images must lie in [0, 1]. Values up to :data:`FLOAT_TOLERANCE` outside that range are
accepted unchanged (resampling filters such as bicubic overshoot a little at edges); anything
further out, and NaN or infinity, is refused: such a batch is almost always 0-255 values or an
already normalised image (about -2.1 to 2.6 with ImageNet statistics), and would score as
garbage rather than fail.
"""
from __future__ import annotations

from torch import Tensor

FLOAT_TOLERANCE = 0.5
LOW, HIGH = 0.0 - FLOAT_TOLERANCE, 1.0 + FLOAT_TOLERANCE


def check_float_range(x: Tensor, what: str) -> None:
    """Raises ValueError naming ``what`` unless every value of float ``x`` is in [LOW, HIGH].

    Reads the values back to the host, so callers skip it for CUDA tensors (no device sync)."""
    lo, hi = (float(v) for v in x.aminmax())
    # "not (a and b)" instead of "a or b": a NaN fails every comparison and must be refused.
    if not (lo >= LOW and hi <= HIGH):
        if lo != lo or hi != hi:
            raise ValueError(f"{what}: float images must be in [0, 1], got NaN values")
        hint = "divide by 255 or pass uint8" if hi > HIGH else "pass images in [0, 1], not normalised ones"
        raise ValueError(
            f"{what}: float images must be in [0, 1] (tolerance {FLOAT_TOLERANCE:g}), got values in [{lo:g}, {hi:g}]: {hint}"
        )
