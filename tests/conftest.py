"""Shared fixtures: devices as a parameter, per-dtype tolerances, the shared data folder."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
import torch

import efficientad_ext  # noqa: F401  (loads the kernels)

CUDA = torch.cuda.is_available() and efficientad_ext.build_info()["cuda_kernels"]

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")])]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances of a kernel that accumulates in float32 (float64 for float64) against the same
# computation in float64 on the same (already rounded) inputs.
ACC_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-5, atol=1e-6),
}
# Tolerances for results rounded to the input dtype (one ulp of that dtype).
OUT_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1.2e-7, atol=1e-7),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-4),
}


@pytest.fixture
def no_tf32():
    """TF32 off for the test: float32 CUDA results are compared at float32 tolerances, and cuDNN
    allows TF32 by default, where NCHW and NHWC may pick engines about 1e-3 apart.
    tests/test_cuda_tf32.py tests the TF32 path with its own tolerance. No effect on the CPU."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh but reproducible random stream per test, derived from the test id (crc32, not
    # hash(): str hashes change between processes). EFFICIENTAD_TEST_SEED shifts every stream,
    # to check that no test passes only for its particular random inputs.
    offset = int(os.environ.get("EFFICIENTAD_TEST_SEED", "0"))
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()) + offset)


def data_root() -> Path | None:
    """The shared data folder: $EFFICIENTAD_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("EFFICIENTAD_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None
