"""efficientad::hard_feature_loss (+ backward) against the torch.quantile reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ACC_TOL, DEVICES, FLOAT_DTYPES
from efficientad_ext import ops, reference

REDUCTIONS = ["batch", "per_sample"]


def _pair(shape, device, dtype):
    teacher = torch.randn(shape, device=device).to(dtype)
    student = torch.randn(shape, device=device).to(dtype)
    return teacher, student


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 7, 5, 3), (3, 13, 9, 11), (2, 384, 17, 15)])
def test_forward_backward_match_reference(device, dtype, reduction, shape):
    teacher, student = _pair(shape, device, dtype)
    s_ours = student.clone().requires_grad_()
    s_ref = student.clone().requires_grad_()
    loss = ops.hard_feature_loss(teacher, s_ours, 0.999, reduction)
    expected = reference.hard_feature_loss(teacher, s_ref, 0.999, reduction)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(loss, expected, **ACC_TOL[dtype])
    loss.backward()
    expected.backward()
    assert s_ours.grad.dtype == dtype
    torch.testing.assert_close(s_ours.grad.double(), s_ref.grad.double(), **ACC_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_other_p(device, p):
    teacher, student = _pair((2, 5, 6, 7), device, torch.float32)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(
            ops.hard_feature_loss(teacher, student, p, reduction),
            reference.hard_feature_loss(teacher, student, p, reduction),
        )


@pytest.mark.parametrize("device", DEVICES)
def test_student_channel_slice_and_channels_last(device):
    # The training code passes student_output[:, :C], a non-contiguous view.
    teacher = torch.randn(2, 16, 9, 10, device=device)
    full = torch.randn(2, 32, 9, 10, device=device, requires_grad=True)
    loss = ops.hard_feature_loss(teacher, full[:, :16], 0.99)
    loss.backward()
    ref_full = full.detach().clone().requires_grad_()
    expected = reference.hard_feature_loss(teacher, ref_full[:, :16], 0.99)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(full.grad, ref_full.grad)
    assert (full.grad[:, 16:] == 0).all()
    t_cl = teacher.contiguous(memory_format=torch.channels_last)
    s_cl = full.detach()[:, :16].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.hard_feature_loss(t_cl, s_cl, 0.99), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_gradient(device):
    teacher = torch.randn(2, 4, 5, 6, device=device, requires_grad=True)
    student = torch.randn(2, 4, 5, 6, device=device, requires_grad=True)
    ops.hard_feature_loss(teacher, student, 0.9).backward()
    t2, s2 = teacher.detach().clone().requires_grad_(), student.detach().clone().requires_grad_()
    reference.hard_feature_loss(t2, s2, 0.9).backward()
    torch.testing.assert_close(teacher.grad, t2.grad)
    torch.testing.assert_close(student.grad, s2.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(reduction):
    teacher = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    student = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, s: ops.hard_feature_loss(t, s, 0.8, reduction), (teacher, student))


def test_per_sample_is_the_mean_of_single_image_losses():
    teacher = torch.randn(3, 8, 8, 8)
    student = teacher + torch.randn(3, 8, 8, 8) * torch.tensor([0.01, 10.0, 1.0]).view(3, 1, 1, 1)
    per_sample = ops.hard_feature_loss(teacher, student, 0.9, "per_sample")
    singles = torch.stack([ops.hard_feature_loss(teacher[i : i + 1], student[i : i + 1], 0.9) for i in range(3)])
    torch.testing.assert_close(per_sample, singles.mean())
    # One batch threshold only ever selects from the noisiest image: a different loss.
    assert not torch.isclose(ops.hard_feature_loss(teacher, student, 0.9, "batch"), per_sample)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_gives_nan_loss_and_zero_grad(device):
    teacher, student = _pair((1, 4, 5, 5), device, torch.float32)
    teacher[0, 1, 2, 3] = float("nan")
    student.requires_grad_()
    loss = ops.hard_feature_loss(teacher, student)
    assert torch.isnan(loss)
    loss.backward()
    assert (student.grad == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_beyond_torch_limit_matches_numpy(reduction):
    # 2 x 384 x 150 x 150 = 17.3M elements > 2^24: the peers crash or subsample here.
    shape = (2, 384, 150, 150)
    teacher, student = _pair(shape, "cpu", torch.float32)
    loss, threshold, count = torch.ops.efficientad.hard_feature_loss(teacher, student, 0.999, reduction == "per_sample")
    d = (teacher.numpy() - student.numpy()) ** 2  # float32, the same rounding as the kernel
    groups = [d.reshape(-1)] if reduction == "batch" else [g.reshape(-1) for g in d]
    losses = []
    for g, (d_g, thr) in enumerate(zip(groups, threshold.tolist())):
        exact_thr = np.quantile(d_g.astype(np.float64), 0.999)
        np.testing.assert_allclose(thr, exact_thr, rtol=1e-6)
        selected = d_g[d_g >= np.float32(thr)]
        assert count[g].item() == selected.size
        losses.append(selected.astype(np.float64).mean())
    np.testing.assert_allclose(loss.item(), np.mean(losses), rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    teacher = torch.randn(2, 3, 4, 5, device=device)
    student = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    for per_sample in (False, True):
        torch.library.opcheck(torch.ops.efficientad.hard_feature_loss.default, (teacher, student, 0.9, per_sample))


def test_torch_compile_fullgraph():
    def step(t, s):
        loss = ops.hard_feature_loss(t, s, 0.99, "per_sample")
        (grad,) = torch.autograd.grad(loss, s)
        return loss, grad

    teacher = torch.randn(2, 8, 6, 6)
    student = torch.randn(2, 8, 6, 6, requires_grad=True)
    compiled = torch.compile(lambda t, s: ops.hard_feature_loss(t, s, 0.99, "per_sample") * 1.0, fullgraph=True)
    loss = compiled(teacher, student)
    loss.backward()
    expected, grad = step(teacher, student.detach().clone().requires_grad_())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(student.grad, grad)


@pytest.mark.parametrize(
    "teacher, student, kwargs, error, match",
    [
        (torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5), {}, ValueError, "student must have the teacher's shape"),
        (torch.randn(2, 3, 4, 5), torch.randn(3, 3, 4, 5), {}, ValueError, "student must have the teacher's shape"),
        (torch.randn(3, 4, 5), torch.randn(3, 4, 5), {}, ValueError, "teacher must have 4 dimensions"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5).double(), {}, TypeError, "student must have teacher's dtype"),
        (torch.randn(2, 3, 4, 5).long(), torch.randn(2, 3, 4, 5).long(), {}, TypeError, "teacher must be float16"),
        (torch.randn(0, 3, 4, 5), torch.randn(0, 3, 4, 5), {}, ValueError, "teacher must not be empty"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), {"p": 1.5}, ValueError, "p must be in"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), {"p": float("nan")}, ValueError, "p must be in"),
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), {"reduction": "mean"}, ValueError, "reduction must be"),
    ],
)
def test_bad_input(teacher, student, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.hard_feature_loss(teacher, student, **kwargs)


def test_wrong_device_is_named():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to mix devices")
    with pytest.raises(ValueError, match="student must be on teacher's device"):
        ops.hard_feature_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3, device="cuda"))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_arguments_are_named_when_wrong(device):
    """The backward op called directly with arguments unlike the forward's outputs: each error
    names the argument and what was expected (not a dtype or tensor-to-scalar conversion error)."""
    t = torch.rand(2, 3, 4, 4, device=device)
    s = torch.rand(2, 3, 4, 4, device=device)
    loss, threshold, count = torch.ops.efficientad.hard_feature_loss(t, s, 0.9, False)
    backward = torch.ops.efficientad.hard_feature_loss_backward
    one = torch.ones((), device=device)
    g_teacher, g_student = backward(one, t, s, threshold, count, False, False)
    assert g_student.shape == s.shape and g_teacher.numel() == 0
    with pytest.raises(TypeError, match="count must be int64, as returned by hard_feature_loss, got Float"):
        backward(one, t, s, threshold, count.float(), False, False)
    with pytest.raises(
        ValueError, match=r"grad_loss must hold one element \(the gradient of the scalar loss\), got shape \[3\]"
    ):
        backward(torch.ones(3, device=device), t, s, threshold, count, False, False)
    with pytest.raises(ValueError, match="threshold and count must have 2 elements \\(one per sample\\)"):
        backward(one, t, s, threshold, count, True, False)
    with pytest.raises(TypeError, match="grad_loss must be float"):
        backward(torch.ones((), dtype=torch.long, device=device), t, s, threshold, count, False, False)
