"""efficientad::anomaly_maps / anomaly_maps_raw against the peers' unfused computation."""

from __future__ import annotations

import pytest
import torch

from conftest import ACC_TOL, DEVICES, FLOAT_DTYPES
from efficientad_ext import ops, reference


def features(b, c, h, w, device, dtype=torch.float32, channels_last=False):
    teacher = (torch.randn(b, c, h, w, device=device) * 3 + 1).to(dtype)
    student = torch.randn(b, 2 * c, h, w, device=device).to(dtype)
    autoencoder = torch.randn(b, c, h, w, device=device).to(dtype)
    if channels_last:
        teacher, student, autoencoder = (
            t.contiguous(memory_format=torch.channels_last) for t in (teacher, student, autoencoder)
        )
    mean = torch.randn(c, device=device)
    std = torch.rand(c, device=device) + 0.5
    return teacher, mean, std, student, autoencoder


def quantiles(device):
    return torch.tensor([0.8, 2.9, 0.7, 2.4], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (1, 3, 5, 7), (3, 16, 13, 9), (2, 384, 17, 19)])
def test_raw_maps_match_reference(device, dtype, size):
    args = features(*size, device, dtype)
    map_st, map_ae = ops.anomaly_maps_raw(*args)
    ref_st, ref_ae = reference.anomaly_maps_raw(*args)
    assert map_st.shape == (size[0], 1, size[2], size[3]) and map_st.dtype == ref_st.dtype
    torch.testing.assert_close(map_st, ref_st, **ACC_TOL[dtype])
    torch.testing.assert_close(map_ae, ref_ae, **ACC_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "size, output_size, pad",
    [
        ((1, 3, 5, 7), None, 0),
        ((2, 8, 6, 6), (14, 14), 4),  # the unpadded PDN's re-padding
        ((3, 16, 13, 9), (40, 27), 1),
        ((2, 384, 14, 14), (64, 64), 4),
        ((1, 4, 7, 5), (3, 2), 0),  # downsampling
    ],
)
def test_maps_match_reference(device, dtype, size, output_size, pad):
    args = features(*size, device, dtype)
    q = quantiles(device)
    got = ops.anomaly_maps(*args, q, output_size, pad)
    anomaly_map, score = reference.anomaly_maps(*args, q, output_size, pad)
    assert got.anomaly_map.shape == anomaly_map.shape and got.score.shape == (size[0],)
    tol = ACC_TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.anomaly_map, anomaly_map, **tol)
    torch.testing.assert_close(got.score, score, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_layouts_channels_last_and_slices(device):
    t, m, s, st, ae = features(2, 12, 11, 10, device, channels_last=True)
    q = quantiles(device)
    expected = reference.anomaly_maps(t, m, s, st, ae, q, (30, 30), 2)
    got = ops.anomaly_maps(t, m, s, st, ae, q, (30, 30), 2)
    torch.testing.assert_close(got.anomaly_map, expected[0])
    # Non-contiguous views of bigger tensors (batch and width slices) and a mixed layout.
    big = torch.randn(4, 24, 11, 20, device=device)
    st2 = big[::2, :, :, ::2]
    got = ops.anomaly_maps(t.contiguous(), m, s, st2, ae, q, (30, 30), 2)
    expected = reference.anomaly_maps(t, m, s, st2, ae, q, (30, 30), 2)
    torch.testing.assert_close(got.anomaly_map, expected[0])
    torch.testing.assert_close(got.score, expected[1])


@pytest.mark.parametrize("device", DEVICES)
def test_raw_then_normalise_equals_fused(device):
    # Training derives the quantiles from the raw maps; inference must agree with that path.
    args = features(2, 8, 9, 9, device)
    q = quantiles(device)
    st, ae = ops.anomaly_maps_raw(*args)
    st = torch.nn.functional.interpolate(torch.nn.functional.pad(st, (4,) * 4), size=(32, 32), mode="bilinear")
    ae = torch.nn.functional.interpolate(torch.nn.functional.pad(ae, (4,) * 4), size=(32, 32), mode="bilinear")
    combined = 0.5 * 0.1 * (st - q[0]) / (q[1] - q[0]) + 0.5 * 0.1 * (ae - q[2]) / (q[3] - q[2])
    got = ops.anomaly_maps(*args, q, (32, 32), 4)
    torch.testing.assert_close(got.anomaly_map, combined)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_feature_gives_nan_score_only_for_that_image(device):
    t, m, s, st, ae = features(2, 4, 6, 6, device)
    st[1, 5, 2, 2] = float("nan")
    got = ops.anomaly_maps(t, m, s, st, ae, quantiles(device), (12, 12), 0)
    assert torch.isfinite(got.score[0]) and torch.isnan(got.score[1])
    assert torch.isnan(got.anomaly_map[1]).any() and not torch.isnan(got.anomaly_map[1]).all()
    raw_st, raw_ae = ops.anomaly_maps_raw(t, m, s, st, ae)
    assert torch.isfinite(raw_st).all() and torch.isnan(raw_ae[1, 0, 2, 2])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = features(2, 5, 4, 6, device)
    torch.library.opcheck(torch.ops.efficientad.anomaly_maps_raw.default, args)
    torch.library.opcheck(torch.ops.efficientad.anomaly_maps.default, (*args, quantiles(device), [12, 10], 1))


def test_torch_compile_fullgraph():
    args = features(1, 8, 7, 7, "cpu")
    q = quantiles("cpu")

    def infer(*a):
        out = ops.anomaly_maps(*a, q, (15, 15), 4)
        raw = ops.anomaly_maps_raw(*a)
        return out.anomaly_map, out.score, raw.map_st + raw.map_ae

    compiled = torch.compile(infer, fullgraph=True)
    for got, expected in zip(compiled(*args), infer(*args)):
        torch.testing.assert_close(got, expected)


def _bad(**changes):
    t, m, s, st, ae = features(2, 4, 5, 5, "cpu")
    kwargs = dict(teacher=t, teacher_mean=m, teacher_std=s, student=st, autoencoder=ae, quantiles=quantiles("cpu"))
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            _bad(student=torch.randn(2, 4, 5, 5)),
            ValueError,
            r"student must have shape \[2, 8, 5, 5\] \(twice the teacher's 4 channels\)",
        ),
        (_bad(student=torch.randn(3, 8, 5, 5)), ValueError, "student must have shape"),
        (_bad(autoencoder=torch.randn(2, 4, 5, 6)), ValueError, "autoencoder must have the teacher's shape"),
        (_bad(teacher_mean=torch.randn(5)), ValueError, "teacher_mean must have 4 elements"),
        (_bad(teacher_std=torch.randn(3)), ValueError, "teacher_std must have 4 elements"),
        (_bad(quantiles=torch.randn(3)), ValueError, "quantiles must hold 4 values"),
        (_bad(teacher=torch.randn(4, 5, 5)), ValueError, "teacher must have 4 dimensions"),
        (_bad(student=torch.randn(2, 8, 5, 5).double()), TypeError, "student must have teacher's dtype"),
        (_bad(teacher=torch.zeros(2, 4, 5, 5, dtype=torch.int32)), TypeError, "teacher must be float16"),
        (
            _bad(teacher=torch.zeros(0, 4, 5, 5), student=torch.zeros(0, 8, 5, 5), autoencoder=torch.zeros(0, 4, 5, 5)),
            ValueError,
            "teacher must not be empty",
        ),
        (_bad(output_size=(0, 4)), ValueError, "output_size must be two positive integers"),
        (_bad(output_size=(4,)), ValueError, "output_size must be two positive integers"),
        (_bad(pad=-1), ValueError, r"pad must be an integer in \[0, 65536\], got -1"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.anomaly_maps(**kwargs)
