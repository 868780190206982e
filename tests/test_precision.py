"""Training precision choice from the CPU's flags, and the bf16 autocast context."""

from __future__ import annotations

import pytest
import torch

from efficientad_ext.training.precision import (
    autocast,
    cpu_has_native_bf16,
    describe_cpu,
    resolve_memory_format,
    resolve_precision,
)

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


@pytest.mark.parametrize(
    "flags, precision, expected",
    [
        ({"avx2", "fma"}, "float32", "contiguous"),  # measured slower channels-last on an AVX2 EPYC
        ({"avx2", "fma"}, "bfloat16", "contiguous"),  # the emulation: float32 kernels
        ({"avx2", "avx512f"}, "float32", "channels_last"),
        ({"avx2", "avx512f", "amx_bf16"}, "float32", "channels_last"),
        ({"avx2", "avx512f", "amx_bf16"}, "bfloat16", "channels_last"),  # measured 1.9x on an AMX Xeon
        ({"avx2", "avx512_bf16"}, "bfloat16", "channels_last"),
        (set(), "float32", "contiguous"),
    ],
)
def test_auto_memory_format_follows_the_cpu_flags_and_precision(flags, precision, expected):
    flags = frozenset(flags)
    assert resolve_memory_format("auto", precision, CPU, flags) == expected
    for explicit in ("channels_last", "contiguous"):  # kept whatever the CPU
        assert resolve_memory_format(explicit, precision, CPU, flags) == explicit


def test_auto_memory_format_on_cuda_and_bad_names():
    cuda = torch.device("cuda")  # resolving touches no GPU
    assert resolve_memory_format("auto", "bfloat16", cuda) == "channels_last"
    assert resolve_memory_format("auto", "float32", cuda) == "contiguous"
    with pytest.raises(ValueError, match="memory_format must be one of auto, channels_last, contiguous, got 'nhwc'"):
        resolve_memory_format("nhwc", "float32", CPU)


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


@pytest.mark.parametrize("op", ["conv2d", "linear", "module"])
def test_emulated_bf16_equals_autocast_on_small_inputs(op):
    """The portable bf16 (float32 kernels on bf16-rounded operands) gives autocast's results;
    small sizes, so the CPU's own bf16 kernels (reference code without native bf16) are quick."""
    import torch.nn.functional as F

    from efficientad_ext.training.precision import EmulatedBf16Convolutions

    torch.manual_seed(0)
    if op == "conv2d":
        args = (torch.randn(2, 5, 13, 11), torch.randn(7, 5, 4, 4), torch.randn(7))
        f = lambda x, w, b: F.conv2d(x, w, b, padding=2)  # noqa: E731
    elif op == "linear":
        args = (torch.randn(6, 33), torch.randn(9, 33), torch.randn(9))
        f = F.linear
    else:
        conv = torch.nn.Conv2d(5, 7, 3)
        args = (torch.randn(1, 5, 10, 10),)
        f = conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = f(*args)
    with EmulatedBf16Convolutions():
        emu = f(*args)
    assert ref.dtype == emu.dtype == torch.bfloat16
    # Same bf16 operands, float32 accumulation in both; the sums' order may differ by an ulp.
    torch.testing.assert_close(emu.float(), ref.float(), rtol=2**-7, atol=1e-2)


def test_bfloat16_autocast_is_emulated_without_native_bf16(monkeypatch):
    import efficientad_ext.training.precision as precision

    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    seen = []
    original = precision.EmulatedBf16Convolutions.__torch_function__

    def spy(self, func, types, args=(), kwargs=None):
        seen.append(func)
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(precision.EmulatedBf16Convolutions, "__torch_function__", spy)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda flags=None: False)
    with autocast("bfloat16", CPU):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and seen
    seen.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda flags=None: True)
    with autocast("bfloat16", CPU):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and not seen  # the real autocast
