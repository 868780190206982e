"""Training precision: float32, or bfloat16 autocast where the hardware computes bf16 natively.

``auto`` picks bf16 autocast on CUDA GPUs that support it and on CPUs with AMX-BF16 or
AVX-512-BF16 (oneDNN runs bf16 convolutions there at 2-5x float32), and float32 elsewhere:
on an AVX2-only CPU oneDNN emulates bf16 and is several times *slower* than float32.

bf16 autocast keeps float32 master weights and optimizer state (autocast casts per op, the
parameters stay float32), and every loss reduction runs in float32: the network outputs are
cast to float32 before the losses, so the hard-feature quantile is exact on float32
differences.

An explicit ``bfloat16`` on a CPU without native bf16 runs the portable emulation
(:class:`EmulatedBf16Convolutions`): oneDNN's own bf16 convolutions there are reference code,
orders of magnitude slower than float32 (the measurement is in benchmarks/RESULTS.md), too slow
even to test. The emulation gives the same
numerics as bf16 autocast's convolutions (bf16 operands, float32 accumulation, a bf16 result)
with float32 kernels, so the bf16 training logic runs and is tested on every CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

log = logging.getLogger("efficientad_ext.training.precision")

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
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


def resolve_memory_format(
    memory_format: str, precision: str, device: torch.device, flags: frozenset[str] | None = None
) -> str:
    """``auto`` -> ``channels_last`` or ``contiguous`` for training on ``device`` in ``precision``
    (already resolved); explicit choices are checked.

    Why (measured per CPU kind, benchmarks/RESULTS.md): channels-last makes training steps
    faster where oneDNN's blocked AVX-512 / AMX kernels read NHWC directly, and slower on
    AVX2-only CPUs. So ``auto`` is channels-last with bf16 (CUDA, or a native-bf16 CPU) and on
    CPUs with AVX-512, and NCHW elsewhere. The layout changes no value beyond float rounding
    order (tests/test_train_fast_paths.py)."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    if memory_format != "auto":
        return memory_format
    if device.type == "cuda":
        return "channels_last" if precision == "bfloat16" else "contiguous"
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        native = precision == "bfloat16" and cpu_has_native_bf16(flags)
        return "channels_last" if native or "avx512f" in flags else "contiguous"
    return "contiguous"


def torch_memory_format(memory_format: str) -> torch.memory_format:
    """The resolved name as a ``torch.memory_format``."""
    return {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[memory_format]


class EmulatedBf16Convolutions(TorchFunctionMode):
    """bf16 autocast's convolutions computed with float32 kernels, for CPUs without native bf16.

    Inside this mode every 2-D convolution (and ``linear``) rounds its floating-point operands to
    bf16 (round to nearest even, as autocast's cast does), runs in float32 (products of bf16
    values are exact in float32, and float32 accumulation is what oneDNN's bf16 kernels do),
    and returns its result rounded to a bf16 tensor, as autocast would. Other ops see those
    bf16 tensors as under autocast. Backward runs through the same casts, in float32."""

    # What the PDNs and the autoencoder run (no transposed convolutions: the decoder upsamples).
    OPS = frozenset({F.conv2d, torch.conv2d, F.linear})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.OPS:
            return func(*args, **kwargs)

        def as_bf16_values(v):
            if isinstance(v, Tensor) and v.is_floating_point():
                return v.to(torch.bfloat16).to(torch.float32)
            return v

        args = tuple(as_bf16_values(a) for a in args)
        kwargs = {k: as_bf16_values(v) for k, v in kwargs.items()}
        return func(*args, **kwargs).to(torch.bfloat16)


_warned_emulation = False


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``precision == "bfloat16"`` (emulated on CPUs without native bf16,
    see :class:`EmulatedBf16Convolutions`), nothing for float32."""
    global _warned_emulation
    if precision != "bfloat16":
        yield
        return
    if device.type == "cpu" and not cpu_has_native_bf16():
        if not _warned_emulation:
            log.warning(
                "bfloat16 on a CPU without native bf16 (%s): emulated with float32 kernels, "
                "slower than float32 training; use it to test, not to train fast",
                describe_cpu(),
            )
            _warned_emulation = True
        with EmulatedBf16Convolutions():
            yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


CPU_WINOGRAD_CHOICES = ("auto", "off")


def resolve_cpu_winograd(cpu_winograd: str, precision: str, device: torch.device) -> bool:
    """Whether training's PDN convolutions run by Winograd (forward and backward,
    :func:`efficientad_ext.ops.winograd_conv2d_trainable`): ``auto`` -> on for float32 steps on
    the CPU (``precision`` already resolved; bf16 autocast keeps oneDNN's bf16 convolutions, and
    there is no CUDA kernel), ``off`` -> never."""
    if cpu_winograd not in CPU_WINOGRAD_CHOICES:
        raise ValueError(f"cpu_winograd must be one of {', '.join(CPU_WINOGRAD_CHOICES)}, got {cpu_winograd!r}")
    return cpu_winograd == "auto" and device.type == "cpu" and precision == "float32"
