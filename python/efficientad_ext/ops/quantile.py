"""``quantile``: exact quantiles of all elements (radix select), with its fake kernel.

Preconditions and NaN semantics: see the package docstring (:mod:`efficientad_ext.ops`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks

_ops = torch.ops.efficientad


def quantile(input: Tensor, q: float | Sequence[float] | Tensor) -> Tensor:
    """Exact quantile(s) of all elements of ``input`` (any shape, any size).

    Same definition as ``torch.quantile(input.flatten(), q)`` (linear interpolation between
    the two nearest order statistics; position ``q * (n - 1)`` computed in float64), found by
    radix selection in O(n) without sorting, and without torch.quantile's 2^24-element limit.

    Args:
        input: float16 / bfloat16 / float32 / float64 tensor with at least one element.
        q: a probability in [0, 1], or a sequence (or 1-D tensor) of them.

    Returns:
        A 0-d tensor when ``q`` is a scalar, else a 1-D tensor of ``len(q)``; dtype of ``input``.
        Any NaN in ``input`` makes every result NaN.
    """
    _checks.tensor(input, "input")
    values, scalar = _checks.probabilities(q, "q")
    _checks.inference_only("quantile", input=input)
    out = _ops.quantile(input, values)
    return out[0] if scalar else out


@torch.library.register_fake("efficientad::quantile")
def _quantile_fake(input: Tensor, q: Sequence[float]) -> Tensor:
    _checks.fake_floating(input, "input")
    return input.new_empty((len(q),))
