"""What the op wrappers check in Python: only what the C++ preconditions (``csrc/checks.h``)
cannot see, because it is gone once an argument has become the schema's type: a non-tensor
argument, a bool or float passed as an integer, a ``q`` given as a scalar, a sequence or a
tensor. Value, shape, dtype and device preconditions live in C++ alone. Each error names the
argument and what was expected."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What every op accumulates in: float64 for float64 inputs, float32 for every other float
    dtype (half and bfloat16 included). The C++ side states the same rule (``csrc/cpu/acc_type.h``,
    ``csrc/cuda/launchers.h``); the references use this function."""
    return torch.float64 if dtype == torch.float64 else torch.float32


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def floating(x: object, name: str) -> Tensor:
    """For Python functions that are not ops (e.g. weight preparation)."""
    t = tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def rank(t: Tensor, n: int, name: str, layout: str) -> None:
    """For Python functions that are not ops (e.g. weight preparation)."""
    if t.dim() != n:
        raise ValueError(f"{name} must have {n} dimensions {layout}, got shape {tuple(t.shape)}")


def integer(x: object, name: str) -> int:
    """An int (or an integer-valued object such as a numpy integer), never a bool or a float:
    the schema would silently truncate 2.7 to 2 or read True as 1."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__} {x!r}") from None


def real(x: object, name: str) -> float:
    """A Python or numpy real number as float (its range is checked in C++; NaN fails there)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(x).__name__}")
    if isinstance(x, Tensor) and x.numel() != 1:
        raise TypeError(f"{name} must be a float in [0, 1], got a tensor of shape {tuple(x.shape)}")
    return float(x)


def probabilities(q: object, name: str) -> tuple[list[float], bool]:
    """q as a list of floats, and whether it was a scalar (the values' range: C++)."""
    if isinstance(q, Tensor):
        if q.dim() > 1:
            raise ValueError(f"{name} must be a float or a 1-D sequence of floats, got shape {tuple(q.shape)}")
        scalar = q.dim() == 0
        values = q.reshape(-1).tolist()
    elif isinstance(q, Sequence) and not isinstance(q, (str, bytes)):
        scalar = False
        values = list(q)
    else:
        scalar = True
        values = [q]
    return [real(v, name) for v in values], scalar


def fake_floating(t: Tensor, name: str) -> None:
    """The dtype precondition in a fake kernel (meta tensors never reach C++)."""
    torch._check_type(
        t.dtype in FLOAT_DTYPES, lambda: f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
    )


def fake_same_device(op: str, **tensors: Tensor | Sequence[Tensor | None] | None) -> None:
    """In a fake kernel: every tensor argument on one device. The dispatcher sends a call with
    any meta tensor to the fake kernel, so without this a meta tensor mixed with CPU ones would
    return an uninitialised tensor instead of the error the real kernels give. Lists (the
    per-layer weights) are checked element by element; None is skipped."""
    seen: list[tuple[str, torch.device]] = []
    for name, value in tensors.items():
        items = (
            [(name, value)]
            if value is None or isinstance(value, Tensor)
            else [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        )
        seen += [(n, t.device) for n, t in items if t is not None]
    if len({d for _, d in seen}) > 1:
        first = seen[0]
        other = next((n, d) for n, d in seen if d != first[1])
        raise ValueError(
            f"{op}: all tensor arguments must be on one device; {first[0]} is on {first[1]} "
            f"but {other[0]} is on {other[1]}"
        )


def inference_only(op: str, **tensors: Tensor | None) -> None:
    """The fused inference ops have no backward: refuse rather than silently drop gradients."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is inference-only and {name} requires grad: call it under torch.no_grad() "
                f"(or detach {name}); for training use the torch.nn modules / efficientad_ext.ops.reference.{op}"
            )
