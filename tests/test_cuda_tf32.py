"""The float32 CUDA convolutions with TF32 allowed (cuDNN's default), tested on their own with a
TF32 tolerance (issue 18, item 2). Every other float32 CUDA test turns TF32 off: with it, NCHW
and NHWC may pick different engines and differ by ~1e-3, far above their 1e-4 tolerances.

TF32 rounds each operand to a 10-bit mantissa (relative error <= 2^-11 ~ 4.9e-4 per operand),
and products accumulate in float32: the error of one output is at most ~2 * 2^-11 times the
sum of |w * x| over its C_in * k * k terms. The tolerance below scales with that sum.
Skips without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import CUDA
from efficientad_ext import build_pdn, ops

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]

TF32_EPS = 2.0**-11


@pytest.fixture(autouse=True)
def _tf32_on():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("relu, pool, pool_padding", [(True, True, 1), (True, False, 0), (False, False, 0)])
def test_conv2d_relu_pool_tf32(relu, pool, pool_padding):
    x = torch.randn(2, 64, 21, 19, device="cuda")
    w = torch.randn(32, 64, 3, 3, device="cuda") / 24
    b = torch.randn(32, device="cuda")
    got = ops.conv2d_relu_pool(x, w, b, 1, relu, pool, pool_padding).double()
    want = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    magnitude = F.conv2d(x.double().abs(), w.double().abs(), padding=1)  # sum of |w * x| per output
    if relu:
        want = F.relu(want)
    if pool:
        want = F.avg_pool2d(want, 2, 2, padding=pool_padding)
        magnitude = F.avg_pool2d(magnitude, 2, 2, padding=pool_padding)
    bound = 2 * TF32_EPS * magnitude + 1e-5
    # cuDNN may still pick a non-TF32 engine for some shapes; the bound holds either way.
    assert ((got - want).abs() <= bound).all(), float(((got - want).abs() / bound).max())


def test_pdn_forward_tf32_layouts_agree_loosely():
    # NCHW and NHWC inputs may run different cuDNN engines under TF32: equal within the TF32
    # tolerance (relative to the output's scale), not the float32 one.
    pdn = build_pdn("small", 64, False).cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    nchw = pdn.fused_forward(x)
    nhwc = pdn.fused_forward(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        want = pdn.double()(x.double())
    scale = float(want.abs().max())
    for got in (nchw, nhwc):
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2 * scale)
    torch.testing.assert_close(nchw, nhwc, rtol=1e-2, atol=1e-2 * scale)
