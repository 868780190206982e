"""efficientad::quantile on CUDA with 7 q values (issue 18, item 1).

Seven q values give up to 14 distinct ranks, so every radix pass after the first runs
ceil(14 / 4) = 4 histogram + select launches, and with many ties most of the later launches
find no prefix in their slots (empty slot loop): the path where the select kernel's block
used to race thread 0's rebuild of the distinct-prefix count. Each case is repeated, since
a race shows up only in some runs. Skips without a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CUDA, FLOAT_DTYPES, OUT_TOL
from efficientad_ext import ops, reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]

Q7 = [0.0, 0.1, 0.25, 0.5, 0.9, 0.995, 1.0]
REPEATS = 20


def numpy_quantile(x: torch.Tensor, q) -> np.ndarray:
    """Exact float64 linear-interpolation quantile of the tensor's values."""
    return np.quantile(x.double().cpu().numpy().reshape(-1), q, method="linear")


def check(x: torch.Tensor, q) -> torch.Tensor:
    """Compares as tests/test_quantile.py does: NumPy at one ulp of the dtype, torch.quantile
    loosely for float32 (it computes the position in float32)."""
    got = ops.quantile(x, q)
    assert got.dtype == x.dtype and got.shape == (len(q),)
    expected = torch.from_numpy(numpy_quantile(x, q)).to(x.dtype)
    torch.testing.assert_close(got.cpu(), expected, **OUT_TOL[x.dtype])
    loose = dict(rtol=1e-4, atol=1e-5) if x.dtype == torch.float32 else OUT_TOL[x.dtype]
    torch.testing.assert_close(got.cpu(), reference.quantile(x, q).cpu(), **loose)
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [7, 1001, 300_007])
def test_seven_q_values_continuous(dtype, n):
    x = torch.randn(n, device="cuda").to(dtype)
    first = check(x, Q7)
    for _ in range(REPEATS):
        assert torch.equal(ops.quantile(x, Q7), first)  # deterministic: no run-to-run race


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("levels", [1, 2, 3, 5])
def test_seven_q_values_few_distinct_prefixes(dtype, levels):
    # 1-5 distinct values: after the first pass at most `levels` distinct prefixes remain for
    # 14 ranks, so the select launches of slots 4..13 have nothing to do (the racy path).
    x = torch.randint(0, levels, (200_003,), device="cuda").to(dtype)
    want = torch.from_numpy(numpy_quantile(x, Q7)).to(dtype)
    for _ in range(REPEATS):
        torch.testing.assert_close(ops.quantile(x, Q7).cpu(), want, rtol=0, atol=0)


def test_seven_q_values_clustered_high_bits():
    # Values that share their top 11 key bits (one prefix after pass 0), separated only in
    # the lower digits: the later passes do the work, the extra slots stay empty.
    x = 1.0 + torch.rand(100_000, device="cuda", dtype=torch.float64) * 1e-9
    first = check(x, Q7)
    for _ in range(REPEATS):
        assert torch.equal(ops.quantile(x, Q7), first)


def test_seven_q_values_shuffled_and_duplicated():
    # Unsorted q with repeats: the op sorts and deduplicates the ranks on the host.
    q = [0.9, 0.1, 0.5, 0.5, 0.0, 1.0, 0.33]
    x = torch.randn(4097, device="cuda")
    check(x, q)
