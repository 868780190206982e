"""Training precision: float32, or bfloat16 autocast where the hardware computes bf16 natively.

``auto`` picks bf16 autocast on CUDA GPUs that support it and on CPUs with AMX-BF16 or
AVX-512-BF16 (oneDNN runs bf16 convolutions there at 2-5x float32), and float32 elsewhere:
on an AVX2-only CPU oneDNN emulates bf16 and is several times *slower* than float32.

bf16 autocast keeps float32 master weights and optimizer state (autocast casts per op, the
parameters stay float32), and every loss reduction runs in float32: the network outputs are
cast to float32 before the losses, so the hard-feature quantile is exact on float32
differences.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def describe_cpu(flags: frozenset[str] | None = None) -> str:
    """The flags that decide the precision, for logs and training.json."""
    flags = cpu_flags() if flags is None else flags
    shown = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return " ".join(shown) if shown else "no avx2/avx512/amx flags"


def resolve_precision(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``auto`` -> ``bfloat16`` or ``float32`` for ``device``; explicit choices are checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_native_bf16(flags) else "float32"
    return "float32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``precision == "bfloat16"``, nothing for float32."""
    if precision == "bfloat16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
