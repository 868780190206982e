"""efficientad::quantile against torch.quantile and an exact NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DEVICES, FLOAT_DTYPES, OUT_TOL
from efficientad_ext import ops, reference


def numpy_quantile(x: torch.Tensor, q) -> np.ndarray:
    """Exact float64 linear-interpolation quantile of the tensor's values."""
    return np.quantile(x.double().cpu().numpy().reshape(-1), q, method="linear")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (1001,), (3, 17, 29), (2, 5, 33, 31)])
def test_matches_reference(device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    q = [0.0, 0.1, 0.5, 0.9, 0.995, 0.999, 1.0]
    got = ops.quantile(x, q)
    assert got.dtype == dtype and got.shape == (len(q),)
    expected = torch.from_numpy(numpy_quantile(x, q)).to(dtype)
    torch.testing.assert_close(got.cpu(), expected, **OUT_TOL[dtype])
    # torch.quantile computes the position q * (n - 1) in float32, so for float32 its
    # interpolation weight is off by up to ~n * 6e-8: compare loosely against it.
    loose = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else OUT_TOL[dtype]
    torch.testing.assert_close(got.cpu(), reference.quantile(x, q).cpu(), **loose)


@pytest.mark.parametrize("device", DEVICES)
def test_scalar_q_returns_0d(device):
    x = torch.randn(100, device=device)
    got = ops.quantile(x, 0.3)
    assert got.dim() == 0
    torch.testing.assert_close(got.cpu(), torch.quantile(x.cpu(), 0.3))
    assert ops.quantile(x, torch.tensor([0.3, 0.7])).shape == (2,)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_ties(device):
    base = torch.randint(0, 5, (40, 30), device=device).float()  # many ties
    for x in (base.t(), base[::3, 1::2], base.unsqueeze(0).expand(3, 40, 30)):
        q = [0.0, 0.25, 0.5, 0.77, 1.0]
        torch.testing.assert_close(ops.quantile(x, q).cpu(), torch.from_numpy(numpy_quantile(x, q)).float())


@pytest.mark.parametrize("device", DEVICES)
def test_order_statistics_exact(device):
    # With n odd, q = 0.5 hits an order statistic exactly: the result must equal it bit for bit.
    n = 100_001
    x = torch.randn(n, device=device) * 1e3
    k = (n - 1) // 2
    exact = np.partition(x.cpu().numpy(), k)[k]
    assert ops.quantile(x, 0.5).item() == exact
    assert ops.quantile(x, 0.0).item() == x.min().item()
    assert ops.quantile(x, 1.0).item() == x.max().item()


@pytest.mark.parametrize("device", DEVICES)
def test_signed_zeros_infinities_and_extremes(device):
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.4e38, -3.4e38], device=device)
    q = [0.0, 0.2, 0.5, 0.8, 1.0]
    got = ops.quantile(x, q).cpu()
    assert got[0].item() == -float("inf") and got[-1].item() == float("inf")
    # Interpolation with an infinite endpoint is infinite, as in NumPy.
    torch.testing.assert_close(got[1:4], torch.from_numpy(numpy_quantile(x, q[1:4])).float())


@pytest.mark.parametrize("device", DEVICES)
def test_nan_gives_nan(device):
    x = torch.randn(1000, device=device)
    x[123] = float("nan")
    got = ops.quantile(x, [0.0, 0.5, 1.0])
    assert torch.isnan(got).all()
    assert torch.isnan(torch.quantile(x.cpu(), 0.5))  # the same semantics as torch


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_beyond_torch_limit_matches_numpy(device):
    # torch.quantile refuses more than 2^24 elements; we must be exact there too.
    n = 2**24 + 4099
    x = torch.rand(n, device=device) ** 3  # skewed, many values share high bits
    q = [0.001, 0.5, 0.9, 0.995, 0.999]
    got = ops.quantile(x, q).double().cpu().numpy()
    np.testing.assert_allclose(got, numpy_quantile(x, q), rtol=1e-6, atol=0)
    k = n - 1
    assert ops.quantile(x, 1.0).item() == x.max().item()
    del k


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.randn(3, 50, device=device)
    torch.library.opcheck(torch.ops.efficientad.quantile.default, (x, [0.1, 0.9]))


def test_torch_compile_fullgraph():
    f = torch.compile(lambda x: ops.quantile(x, [0.9, 0.995]) * 2, fullgraph=True)
    x = torch.randn(4, 999)
    torch.testing.assert_close(f(x), ops.quantile(x, [0.9, 0.995]) * 2)


@pytest.mark.parametrize(
    "x, q, error, match",
    [
        (torch.randn(10), 1.5, ValueError, "q must be in"),
        (torch.randn(10), -0.1, ValueError, "q must be in"),
        (torch.randn(10), float("nan"), ValueError, "q must be in"),
        (torch.randn(10), [], ValueError, "at least one"),
        (torch.randn(10), "0.5", TypeError, "q must be a float"),
        (torch.randn(10), torch.ones(2, 2) * 0.5, ValueError, "1-D"),
        (torch.arange(10), 0.5, TypeError, "input must be float16"),
        (torch.randn(0), 0.5, ValueError, "input must not be empty"),
        ([1.0, 2.0], 0.5, TypeError, "input must be a torch.Tensor"),
    ],
)
def test_bad_input(x, q, error, match):
    with pytest.raises(error, match=match):
        ops.quantile(x, q)


def test_direct_op_call_fails_as_the_wrapper_does():
    """The preconditions live in C++ only: a direct torch.ops call raises the wrapper's
    exception type and message."""
    for call in (ops.quantile, torch.ops.efficientad.quantile):
        with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got 2"):
            call(torch.randn(5), [2.0])
        with pytest.raises(ValueError, match="input must not be empty"):
            call(torch.randn(0), [0.5])
        with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
            call(torch.arange(5), [0.5])
