"""efficientad::conv2d_relu_pool and efficientad::pdn_forward against torch.nn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES, FLOAT_DTYPES
from efficientad_ext import PDN, build_pdn, ops, reference


@pytest.fixture(autouse=True)
def _float32_cuda_without_tf32(no_tf32):
    """float32 CUDA results are compared at float32 tolerances (conftest.no_tf32)."""


# Convolutions run in oneDNN / cuDNN in both paths; half precision differs by rounding order.
CONV_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=4e-2),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "shape, k, padding, relu, pool, pool_padding",
    [
        ((1, 3, 17, 19), 4, 3, True, True, 1),
        ((2, 5, 16, 15), 4, 0, True, True, 0),
        ((2, 7, 9, 11), 3, 1, True, False, 0),
        ((1, 6, 8, 8), 4, 0, False, False, 0),
        ((3, 4, 10, 7), 1, 0, True, True, 1),
        ((1, 2, 5, 5), 2, 0, False, True, 1),
    ],
)
def test_conv2d_relu_pool_matches_reference(device, dtype, shape, k, padding, relu, pool, pool_padding):
    x = torch.randn(shape, device=device).to(dtype)
    weight = (torch.randn(8, shape[1], k, k, device=device) / k).to(dtype)
    bias = torch.randn(8, device=device).to(dtype)
    got = ops.conv2d_relu_pool(x, weight, bias, padding, relu, pool, pool_padding)
    expected = reference.conv2d_relu_pool(x, weight, bias, padding, relu, pool, pool_padding)
    assert got.shape == expected.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, **CONV_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_relu_pool_inputs_any_layout_no_bias(device):
    x = torch.randn(2, 9, 12, 14, device=device)[:, ::2]  # channel slice: non-contiguous
    weight = torch.randn(4, 5, 3, 3, device=device)
    got = ops.conv2d_relu_pool(x, weight, None, 1, True, True, 0)
    torch.testing.assert_close(got, F.avg_pool2d(F.relu(F.conv2d(x, weight, padding=1)), 2, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool", [True, False])
def test_conv2d_relu_pool_split_halves_equal_the_full_layer(device, pool):
    x = torch.randn(2, 3, 19, 18, device=device)
    weight = torch.randn(24, 3, 4, 4, device=device) / 4
    bias = torch.randn(24, device=device)
    first, second = ops.conv2d_relu_pool_split(x, weight, bias, 3, True, pool, 1, 16)
    whole = ops.conv2d_relu_pool(x, weight, bias, 3, True, pool, 1)
    for half, want in ((first, whole[:, :16]), (second, whole[:, 16:])):
        assert half.shape == want.shape and half.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(half, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("out_channels", [384, 768])
def test_pdn_forward_matches_nn(device, arch, padded, out_channels):
    pdn = build_pdn(arch, out_channels, padded).to(device).eval()
    x = torch.randn(2, 3, 67, 75, device=device)
    with torch.no_grad():
        expected = pdn(x)
    got = pdn.fused_forward(x)
    assert got.shape == expected.shape == (2, out_channels, *pdn.output_size(67, 75))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "arch, padded, size", [("small", False, 56), ("small", True, 64), ("medium", False, 56), ("medium", True, 64)]
)
def test_pdn_output_sizes_at_256(arch, padded, size):
    # The paper's sizes: 256x256 -> 64x64 padded; the peers' unpadded default -> 56x56.
    assert build_pdn(arch, 384, padded).output_size(256, 256) == (size, size)


def test_pdn_state_dict_keys_match_the_published_layout():
    # nelson1425/EfficientAD saves nn.Sequential state dicts: conv indices 0, 3, 6, 8 (small).
    assert [k for k in build_pdn("small").state_dict() if k.endswith("weight")] == [
        "0.weight",
        "3.weight",
        "6.weight",
        "8.weight",
    ]
    medium = [k for k in build_pdn("medium").state_dict() if k.endswith("weight")]
    assert medium == ["0.weight", "3.weight", "6.weight", "8.weight", "10.weight", "12.weight"]


@pytest.mark.parametrize("device", DEVICES)
def test_pdn_forward_bfloat16(device):
    pdn = build_pdn("small", 384, False).to(device).eval()
    x = torch.rand(1, 3, 64, 64, device=device)
    with torch.no_grad():
        expected = pdn(x)
    got = pdn.to(torch.bfloat16).fused_forward(x.to(torch.bfloat16))
    torch.testing.assert_close(got.float(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.randn(1, 3, 12, 12, device=device)
    w = torch.randn(4, 3, 4, 4, device=device)
    b = torch.randn(4, device=device)
    torch.library.opcheck(torch.ops.efficientad.conv2d_relu_pool.default, (x, w, b, 3, True, True, 1))
    torch.library.opcheck(torch.ops.efficientad.conv2d_relu_pool.default, (x, w, None, 0, False, False, 0))
    torch.library.opcheck(torch.ops.efficientad.conv2d_relu_pool_split.default, (x, w, b, 3, True, True, 1, 1))
    torch.library.opcheck(torch.ops.efficientad.conv2d_relu_pool_split.default, (x, w, None, 1, True, False, 0, 3))
    pdn = build_pdn("small", 8, False).to(device)
    args = (torch.randn(1, 3, 40, 40, device=device), *pdn.layer_arguments())
    torch.library.opcheck(torch.ops.efficientad.pdn_forward.default, args)


def test_torch_compile_fullgraph():
    pdn = build_pdn("small", 16, True).eval()
    x = torch.randn(1, 3, 48, 48)
    compiled = torch.compile(lambda inp: ops.pdn_forward(inp, *pdn.layer_arguments()) + 0.0, fullgraph=True)
    torch.testing.assert_close(compiled(x), pdn.fused_forward(x))
    w = torch.randn(5, 3, 4, 4)
    layer = torch.compile(lambda inp: ops.conv2d_relu_pool(inp, w, None, 3, True, True, 1), fullgraph=True)
    torch.testing.assert_close(layer(x), reference.conv2d_relu_pool(x, w, None, 3, True, True, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input=torch.randn(1, 4, 8, 8)), ValueError, "input must have 3 channels"),
        (dict(input=torch.randn(3, 8, 8)), ValueError, "input must have 4 dimensions"),
        (dict(input=torch.randn(1, 3, 8, 8).double()), TypeError, "input must have the first layer's weight's dtype"),
        (dict(input=torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)), TypeError, "input must be float16"),
        (dict(input=torch.randn(1, 3, 20, 20)), ValueError, "too small for these layers"),
        (dict(input=torch.randn(0, 3, 64, 64)), ValueError, "input must not be empty"),
    ],
)
def test_pdn_forward_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.pdn_forward(kwargs["input"], *build_pdn("small", 384, False).layer_arguments())


def test_pdn_forward_needs_a_layer():
    with pytest.raises(ValueError, match="weights must hold at least one layer"):
        ops.pdn_forward(torch.randn(1, 3, 64, 64), [], [], [], [], [], [])


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3)), ValueError, "input must have 2 channels"),
        ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3)), ValueError, "weight must have 4 dimensions"),
        ((torch.randn(1, 3, 2, 2), torch.randn(4, 3, 4, 4)), ValueError, "too small"),
        ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(5)), ValueError, "bias must have shape"),
        ((torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3).half()), TypeError, "weight must have input's dtype"),
    ],
)
def test_conv2d_relu_pool_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        ops.conv2d_relu_pool(*args)


def test_pool_padding_must_be_0_or_1():
    with pytest.raises(ValueError, match="pool_padding must be 0 or 1"):
        ops.conv2d_relu_pool(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), None, 1, True, True, 2)


def test_pdn_arch_is_checked():
    with pytest.raises(ValueError, match="arch must be one of"):
        PDN("large")


def test_inference_ops_refuse_to_drop_gradients():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="conv2d_relu_pool is inference-only and input requires grad"):
        ops.conv2d_relu_pool(x, torch.randn(4, 3, 3, 3))
    with torch.no_grad():
        assert ops.conv2d_relu_pool(x, torch.randn(4, 3, 3, 3)).shape == (1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="quantile is inference-only"):
        ops.quantile(x, 0.5)
