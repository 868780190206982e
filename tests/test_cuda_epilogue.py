"""The CUDA conv2d_relu_pool epilogue (issue 18, item 3): the convolution runs without bias
and one pass applies bias + ReLU + pooling, 16 bytes per load where C, the split and every
pointer allow it, one element per load otherwise; conv2d_relu_pool_split writes the two
output-channel halves as dense channels-last tensors. Compared against float64 references
with TF32 off. Skips without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import CUDA, FLOAT_DTYPES
from efficientad_ext import ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]

# Against a float64 reference on the same rounded inputs: float32 accumulates the convolution
# in float32 (TF32 off); half types round the convolution output once (cuDNN) and the result.
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=4e-2),
}


@pytest.fixture(autouse=True)
def _float32_cuda_without_tf32(no_tf32):
    """float32 CUDA results are compared at float32 tolerances (conftest.no_tf32)."""


def reference(x, w, b, padding, relu, pool, pool_padding):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=padding)
    if relu:
        y = F.relu(y)
    if pool:
        y = F.avg_pool2d(y, 2, 2, padding=pool_padding)
    return y


def layer_inputs(c_in, c_out, size, dtype, k=3, bias=True):
    x = torch.randn(2, c_in, *size, device="cuda").to(dtype)
    w = (torch.randn(c_out, c_in, k, k, device="cuda") / k).to(dtype)
    b = torch.randn(c_out, device="cuda").to(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("c_out", [16, 24, 7, 3])  # 16, 24: vectorised for every dtype; 7, 3: scalar
@pytest.mark.parametrize(
    "relu, pool, pool_padding",
    [(True, True, 1), (True, True, 0), (False, True, 1), (True, False, 0), (False, False, 0)],
)
def test_bias_relu_pool_in_one_pass(dtype, c_out, relu, pool, pool_padding):
    x, w, b = layer_inputs(5, c_out, (13, 10), dtype)
    got = ops.conv2d_relu_pool(x, w, b, 1, relu, pool, pool_padding)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype
    torch.testing.assert_close(got.double(), reference(x, w, b, 1, relu, pool, pool_padding), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool", [True, False])
def test_no_bias(dtype, pool):
    x, w, _ = layer_inputs(4, 16, (9, 12), dtype, bias=False)
    got = ops.conv2d_relu_pool(x, w, None, 1, True, pool, 1)
    torch.testing.assert_close(got.double(), reference(x, w, None, 1, True, pool, 1), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_misaligned_bias_takes_the_scalar_path(dtype):
    # A bias view one element into its storage is not 16-byte aligned: the run-time check
    # must fall back to one element per load (and give the same result).
    x, w, b = layer_inputs(3, 16, (11, 11), dtype)
    storage = torch.empty(17, device="cuda", dtype=dtype)
    storage[1:].copy_(b)
    shifted = storage[1:]
    assert shifted.data_ptr() % 16 != 0
    got = ops.conv2d_relu_pool(x, w, shifted, 1, True, True, 1)
    torch.testing.assert_close(got, ops.conv2d_relu_pool(x, w, b, 1, True, True, 1), rtol=0, atol=0)
    torch.testing.assert_close(got.double(), reference(x, w, b, 1, True, True, 1), **TOL[dtype])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("c_out, split", [(32, 16), (48, 16), (16, 8), (10, 3), (12, 5)])
@pytest.mark.parametrize("pool", [True, False])
def test_split_halves_are_dense_and_equal_the_slices(dtype, c_out, split, pool):
    x, w, b = layer_inputs(3, c_out, (20, 17), dtype, k=4)
    first, second = ops.conv2d_relu_pool_split(x, w, b, 3, True, pool, 1, split)
    whole = ops.conv2d_relu_pool(x, w, b, 3, True, pool, 1)
    for half, want in ((first, whole[:, :split]), (second, whole[:, split:])):
        assert half.is_contiguous(memory_format=torch.channels_last) and half.shape == want.shape
        torch.testing.assert_close(half, want, rtol=0, atol=0)  # same convolution, same epilogue math
    torch.testing.assert_close(
        torch.cat([first, second], 1).double(), reference(x, w, b, 3, True, pool, 1), **TOL[dtype]
    )


def test_split_is_checked():
    x, w, b = layer_inputs(3, 8, (9, 9), torch.float32)
    for bad in (0, 8, -1):
        with pytest.raises(ValueError, match="split must be in"):
            ops.conv2d_relu_pool_split(x, w, b, 1, True, True, 0, bad)
    with pytest.raises(RuntimeError, match="split must be in"):
        torch.ops.efficientad.conv2d_relu_pool_split(x, w, b, 1, True, True, 0, 8)


def test_graph_capture_of_the_epilogue():
    # The epilogue only enqueues work on the current stream: it can be captured and replayed.
    x, w, b = layer_inputs(3, 16, (16, 16), torch.bfloat16, k=4)
    eager = ops.conv2d_relu_pool_split(x, w, b, 3, True, True, 1, 8)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.conv2d_relu_pool_split(x, w, b, 3, True, True, 1, 8)  # warm-up: cuDNN picks its algorithm
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.conv2d_relu_pool_split(x, w, b, 3, True, True, 1, 8)
    graph.replay()
    for got, want in zip(captured, eager):
        torch.testing.assert_close(got, want)
