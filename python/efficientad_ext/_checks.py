"""Argument checks of the Python wrappers: each error names the argument and what was expected."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def floating(x: object, name: str) -> Tensor:
    t = tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def rank(t: Tensor, n: int, name: str, layout: str) -> None:
    if t.dim() != n:
        raise ValueError(f"{name} must have {n} dimensions {layout}, got shape {tuple(t.shape)}")


def nonempty(t: Tensor, name: str) -> None:
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def same_device(reference: Tensor, ref_name: str, **others: Tensor) -> None:
    for name, t in others.items():
        if t.device != reference.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {reference.device}, got {t.device}")


def same_dtype(reference: Tensor, ref_name: str, **others: Tensor) -> None:
    for name, t in others.items():
        if t.dtype != reference.dtype:
            raise TypeError(f"{name} must have {ref_name}'s dtype {reference.dtype}, got {t.dtype}")


def probability(p: object, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(p).__name__}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def probabilities(q: object, name: str) -> tuple[list[float], bool]:
    """q as a list of floats, and whether it was a scalar."""
    if isinstance(q, Tensor):
        if q.dim() > 1:
            raise ValueError(f"{name} must be a float or a 1-D sequence of floats, got shape {tuple(q.shape)}")
        scalar = q.dim() == 0
        values = [float(v) for v in q.reshape(-1).tolist()]
    elif isinstance(q, Sequence) and not isinstance(q, (str, bytes)):
        scalar = False
        values = list(q)
    else:
        scalar = True
        values = [q]
    if not values:
        raise ValueError(f"{name} must hold at least one quantile, got an empty sequence")
    return [probability(v, name) for v in values], scalar


def inference_only(op: str, **tensors: Tensor | None) -> None:
    """The fused inference ops have no backward: refuse rather than silently drop gradients."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is inference-only and {name} requires grad: call it under torch.no_grad() "
                f"(or detach {name}); for training use the torch.nn modules / efficientad_ext.reference.{op}"
            )
