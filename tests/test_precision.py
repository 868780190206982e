"""Training precision choice from the CPU's flags, and the bf16 autocast context."""
from __future__ import annotations

import pytest
import torch

from efficientad_ext.precision import autocast, cpu_has_native_bf16, describe_cpu, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "fma"}, "float32"),  # AVX2 only: oneDNN emulates bf16, slower than float32
        ({"avx2", "avx512f"}, "float32"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),  # AVX-512-BF16 EPYCs
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bfloat16"),  # AMX Xeons
        (set(), "float32"),  # flags unreadable
    ],
)
def test_auto_precision_follows_the_cpu_flags(flags, expected):
    flags = frozenset(flags)
    assert resolve_precision("auto", CPU, flags) == expected
    assert cpu_has_native_bf16(flags) == (expected == "bfloat16")
    # Explicit choices are kept whatever the CPU.
    assert resolve_precision("float32", CPU, flags) == "float32"
    assert resolve_precision("bfloat16", CPU, flags) == "bfloat16"


def test_describe_and_bad_precision():
    assert describe_cpu(frozenset({"avx2", "amx_bf16"})) == "amx_bf16 avx2"
    assert describe_cpu(frozenset()) == "no avx2/avx512/amx flags"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'fp8'"):
        resolve_precision("fp8", CPU)


def test_autocast_context_casts_convolutions_only_in_bf16():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast("bfloat16", CPU):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32  # float32 master weights
    with autocast("float32", CPU):
        assert conv(x).dtype == torch.float32
