"""Each precondition is checked once, in C++ (csrc/checks.h): a direct torch.ops.efficientad
call fails with the wrapper's exception type and message, and the fake kernels (meta
tensors, torch.compile) refuse the same shapes (issue 13)."""

from __future__ import annotations

import pytest
import torch

from efficientad_ext import ops

_OPS = torch.ops.efficientad


def _features(**over):
    f = dict(
        teacher=torch.randn(2, 4, 5, 5),
        teacher_mean=torch.randn(4),
        teacher_std=torch.rand(4) + 0.5,
        student=torch.randn(2, 8, 5, 5),
        autoencoder=torch.randn(2, 4, 5, 5),
        quantiles=torch.tensor([0.0, 1.0, 0.0, 1.0]),
    )
    f.update(over)
    return f


def _maps_wrapper(**over):
    f = _features(**over)
    return lambda: ops.anomaly_maps(
        f["teacher"], f["teacher_mean"], f["teacher_std"], f["student"], f["autoencoder"], f["quantiles"], (9, 9), 0
    )


def _maps_direct(**over):
    f = _features(**over)
    return lambda: _OPS.anomaly_maps(
        f["teacher"], f["teacher_mean"], f["teacher_std"], f["student"], f["autoencoder"], f["quantiles"], [9, 9], 0
    )


CASES = {
    "quantile: q out of range": (
        lambda: ops.quantile(torch.randn(5), 1.5),
        lambda: _OPS.quantile(torch.randn(5), [1.5]),
        ValueError,
        r"q must be in \[0, 1\], got 1.5",
    ),
    "quantile: NaN q": (
        lambda: ops.quantile(torch.randn(5), float("nan")),
        lambda: _OPS.quantile(torch.randn(5), [float("nan")]),
        ValueError,
        r"q must be in \[0, 1\], got nan",
    ),
    "hard loss: shapes": (
        lambda: ops.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 6, 4, 4)),
        lambda: _OPS.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 6, 4, 4), 0.5, False),
        ValueError,
        "student must have the teacher's shape",
    ),
    "hard loss: dtypes": (
        lambda: ops.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4).double()),
        lambda: _OPS.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4).double(), 0.5, False),
        TypeError,
        "student must have teacher's dtype",
    ),
    "hard loss: p": (
        lambda: ops.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), p=-0.1),
        lambda: _OPS.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), -0.1, False),
        ValueError,
        r"p must be in \[0, 1\]",
    ),
    "maps: student channels": (
        _maps_wrapper(student=torch.randn(2, 4, 5, 5)),
        _maps_direct(student=torch.randn(2, 4, 5, 5)),
        ValueError,
        r"student must have shape \[2, 8, 5, 5\]",
    ),
    "maps: statistics": (
        _maps_wrapper(teacher_std=torch.rand(3)),
        _maps_direct(teacher_std=torch.rand(3)),
        ValueError,
        "teacher_std must have 4 elements",
    ),
    "maps: integer features": (
        _maps_wrapper(teacher=torch.zeros(2, 4, 5, 5, dtype=torch.int32)),
        _maps_direct(teacher=torch.zeros(2, 4, 5, 5, dtype=torch.int32)),
        TypeError,
        "teacher must be float16, bfloat16, float32 or float64",
    ),
    "conv: channels": (
        lambda: ops.conv2d_relu_pool(torch.randn(1, 2, 9, 9), torch.randn(4, 3, 3, 3)),
        lambda: _OPS.conv2d_relu_pool(torch.randn(1, 2, 9, 9), torch.randn(4, 3, 3, 3), None, 0, True, False, 0),
        ValueError,
        r"input must have 3 channels \(weight's C_in\)",
    ),
    "conv: too small": (
        lambda: ops.conv2d_relu_pool(torch.randn(1, 3, 2, 2), torch.randn(4, 3, 3, 3)),
        lambda: _OPS.conv2d_relu_pool(torch.randn(1, 3, 2, 2), torch.randn(4, 3, 3, 3), None, 0, True, False, 0),
        ValueError,
        "input of spatial size 2x2 is too small for a 3x3 kernel with padding 0",
    ),
    "split: range": (
        lambda: ops.conv2d_relu_pool_split(
            torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3), None, 0, True, False, 0, 4
        ),
        lambda: _OPS.conv2d_relu_pool_split(
            torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3), None, 0, True, False, 0, 4
        ),
        ValueError,
        r"split must be in \[1, 3\]",
    ),
    "pdn: image too small": (
        lambda: ops.pdn_forward(
            torch.randn(1, 3, 6, 6),
            [torch.randn(4, 3, 4, 4), torch.randn(4, 4, 4, 4)],
            [None, None],
            [0, 0],
            [True, True],
            [True, False],
            [0, 0],
        ),
        lambda: _OPS.pdn_forward(
            torch.randn(1, 3, 6, 6),
            [torch.randn(4, 3, 4, 4), torch.randn(4, 4, 4, 4)],
            [None, None],
            [0, 0],
            [True, True],
            [True, False],
            [0, 0],
        ),
        ValueError,
        "input image size 6x6 is too small for these layers",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_call_fails_as_the_wrapper(case):
    wrapper, direct, error, match = CASES[case]
    with torch.no_grad():
        with pytest.raises(error, match=match) as via_wrapper:
            wrapper()
        with pytest.raises(error, match=match) as via_ops:
            direct()
    assert str(via_wrapper.value).splitlines()[0] == str(via_ops.value).splitlines()[0]


def test_python_only_checks_name_the_argument():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        ops.quantile([1.0, 2.0], 0.5)
    with pytest.raises(TypeError, match="padding must be an integer, got True"):
        ops.conv2d_relu_pool(torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3), padding=True)
    with pytest.raises(TypeError, match="padding must be an integer, got float 1.5"):
        ops.conv2d_relu_pool(torch.randn(1, 3, 9, 9), torch.randn(4, 3, 3, 3), padding=1.5)
    with pytest.raises(TypeError, match="p must be a float in"):
        ops.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), p="0.9")
    with pytest.raises(ValueError, match="reduction must be 'batch' or 'per_sample'"):
        ops.hard_feature_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), reduction="mean")


def test_fake_kernels_refuse_the_same_shapes():
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="student must have the teacher's shape"):
        _OPS.hard_feature_loss(torch.empty(1, 3, 4, 4, device=meta), torch.empty(1, 6, 4, 4, device=meta), 0.5, False)
    f = {k: v.to(meta) for k, v in _features(student=torch.randn(2, 4, 5, 5)).items()}
    with pytest.raises(ValueError, match="student must have shape"):
        _OPS.anomaly_maps_raw(f["teacher"], f["teacher_mean"], f["teacher_std"], f["student"], f["autoencoder"])
    with pytest.raises(ValueError, match="too small"):
        _OPS.conv2d_relu_pool(
            torch.empty(1, 3, 2, 2, device=meta), torch.empty(4, 3, 3, 3, device=meta), None, 0, True, False, 0
        )
    with pytest.raises(TypeError, match="input must be float16"):
        _OPS.quantile(torch.empty(5, dtype=torch.int64, device=meta), [0.5])
    # Valid shapes give the kernels' output shapes.
    out = _OPS.conv2d_relu_pool(
        torch.empty(2, 3, 9, 9, device=meta), torch.empty(4, 3, 3, 3, device=meta), None, 1, True, True, 0
    )
    assert out.shape == (2, 4, 4, 4)
