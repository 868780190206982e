"""``hard_feature_loss``: Algorithm 1's hard-feature loss, its fake kernels and autograd.

Preconditions and NaN semantics: see the package docstring (:mod:`efficientad_ext.ops`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks
from efficientad_ext.ops.arg_checks import accumulation_dtype as _acc_dtype

_ops = torch.ops.efficientad


Reduction = Literal["batch", "per_sample"]


def hard_feature_loss(teacher: Tensor, student: Tensor, p: float = 0.999, reduction: Reduction = "batch") -> Tensor:
    """EfficientAD's hard-feature loss (Algorithm 1, lines 11-13).

    ``d = (teacher - student)^2``; ``threshold`` = exact ``p``-quantile of ``d``; the loss is the
    mean of the elements of ``d`` that are >= ``threshold``.

    Args:
        teacher: [B, C, H, W], already channel-normalised.
        student: [B, C, H, W], the first C channels of the student output (a channel slice
            is fine), same dtype and device as ``teacher``.
        p: quantile in [0, 1]; the paper uses 0.999.
        reduction: ``"batch"`` takes one threshold over the whole batch (anomalib's
            and the paper code's); ``"per_sample"`` gives each image its own threshold and averages the
            per-image losses.

    Returns:
        A 0-d loss, float32 (float64 for float64 inputs). Differentiable with respect to
        ``student`` and, if it requires grad, ``teacher`` (the threshold itself carries no
        gradient, as in the paper). Exact at any size (no subsampling above 2^24 elements).
    """
    _checks.tensor(teacher, "teacher")
    _checks.tensor(student, "student")
    p = _checks.real(p, "p")
    if reduction not in ("batch", "per_sample"):
        raise ValueError(f"reduction must be 'batch' or 'per_sample', got {reduction!r}")
    loss, _threshold, _count = _ops.hard_feature_loss(teacher, student, p, reduction == "per_sample")
    return loss


@torch.library.register_fake("efficientad::hard_feature_loss")
def _hard_feature_loss_fake(teacher: Tensor, student: Tensor, p: float, per_sample: bool):
    _checks.fake_same_device("hard_feature_loss", teacher=teacher, student=student)
    _checks.fake_floating(teacher, "teacher")
    torch._check_value(
        teacher.dim() == 4 and student.shape == teacher.shape,
        lambda: (
            f"student must have the teacher's shape {tuple(teacher.shape)} [B, C, H, W], got {tuple(student.shape)}"
        ),
    )
    groups = teacher.shape[0] if per_sample else 1
    acc = _acc_dtype(teacher.dtype)
    return (
        teacher.new_empty((), dtype=acc),
        teacher.new_empty((groups,), dtype=acc),
        teacher.new_empty((groups,), dtype=torch.int64),
    )


@torch.library.register_fake("efficientad::hard_feature_loss_backward")
def _hard_feature_loss_backward_fake(grad_loss, teacher, student, threshold, count, per_sample, teacher_grad):
    _checks.fake_same_device(
        "hard_feature_loss_backward",
        grad_loss=grad_loss,
        teacher=teacher,
        student=student,
        threshold=threshold,
        count=count,
    )
    grad_teacher = torch.empty_like(teacher) if teacher_grad else teacher.new_empty((0,))
    return grad_teacher, torch.empty_like(student)


def _hard_feature_loss_setup_context(ctx, inputs, output) -> None:
    teacher, student, _p, per_sample = inputs
    _loss, threshold, count = output
    ctx.save_for_backward(teacher, student, threshold, count)
    ctx.per_sample = per_sample
    ctx.mark_non_differentiable(threshold, count)


def _hard_feature_loss_backward(ctx, grad_loss, _grad_threshold, _grad_count):
    teacher, student, threshold, count = ctx.saved_tensors
    teacher_grad = ctx.needs_input_grad[0]
    grad_teacher, grad_student = _ops.hard_feature_loss_backward(
        grad_loss, teacher, student, threshold, count, ctx.per_sample, teacher_grad
    )
    return (grad_teacher if teacher_grad else None), grad_student, None, None


torch.library.register_autograd(
    "efficientad::hard_feature_loss", _hard_feature_loss_backward, setup_context=_hard_feature_loss_setup_context
)
