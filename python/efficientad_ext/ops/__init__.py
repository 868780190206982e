"""Typed wrappers of the ``torch.ops.efficientad`` operators, with their fake (meta) kernels
for ``torch.compile`` and their autograd registrations.

Every precondition is checked once, in C++ (``csrc/checks.h``), and raises ``TypeError`` /
``ValueError`` naming the argument, for these wrappers and direct ``torch.ops`` calls alike.
The wrappers only do what is Python's own: refuse non-tensors and non-integers (the
dispatcher would report those as a schema mismatch), turn ``q`` and ``reduction`` into the
schema's types, and refuse tensors that require grad on the inference-only ops. The fake
kernels check with ``torch._check_value`` / ``torch._check_type`` what they need to compute
output shapes, so ``torch.compile`` and meta tensors fail the same way.

NaN semantics (documented, tested): a NaN anywhere in the input of :func:`quantile` makes every
requested quantile NaN (as ``torch.quantile``); NaN in the teacher/student of
:func:`hard_feature_loss` gives a NaN loss (and zero gradient); NaN in a feature map gives NaN
at the affected map pixels and a NaN image score, never a finite score that ignores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks

if TYPE_CHECKING:
    from efficientad_ext.inference.winograd import WinogradWeights

_ops = torch.ops.efficientad


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- quantile


def quantile(input: Tensor, q: float | Sequence[float] | Tensor) -> Tensor:
    """Exact quantile(s) of all elements of ``input`` (any shape, any size).

    Same definition as ``torch.quantile(input.flatten(), q)`` (linear interpolation between
    the two nearest order statistics; position ``q * (n - 1)`` computed in float64), found by
    radix selection in O(n) without sorting, and without torch.quantile's 2^24-element limit.

    Args:
        input: float16 / bfloat16 / float32 / float64 tensor with at least one element.
        q: a probability in [0, 1], or a sequence (or 1-D tensor) of them.

    Returns:
        A 0-d tensor when ``q`` is a scalar, else a 1-D tensor of ``len(q)``; dtype of ``input``.
        Any NaN in ``input`` makes every result NaN.
    """
    _checks.tensor(input, "input")
    values, scalar = _checks.probabilities(q, "q")
    _checks.inference_only("quantile", input=input)
    out = _ops.quantile(input, values)
    return out[0] if scalar else out


@torch.library.register_fake("efficientad::quantile")
def _quantile_fake(input: Tensor, q: Sequence[float]) -> Tensor:
    _checks.fake_floating(input, "input")
    return input.new_empty((len(q),))


# ----------------------------------------------------------------------------- hard loss

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

# ----------------------------------------------------------------------------- anomaly maps


class RawMaps(NamedTuple):
    """Channel-mean squared-difference maps at feature resolution, [B, 1, h, w] each."""

    map_st: Tensor
    map_ae: Tensor


class AnomalyMaps(NamedTuple):
    """The combined, normalised anomaly map [B, 1, H, W] and the image scores [B]."""

    anomaly_map: Tensor
    score: Tensor


def _check_feature_tensors(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        _checks.tensor(t, name)


def anomaly_maps_raw(
    teacher: Tensor, teacher_mean: Tensor, teacher_std: Tensor, student: Tensor, autoencoder: Tensor
) -> RawMaps:
    """The two raw maps of Algorithm 2 (lines 2-7), in one pass over the features.

    ``map_st = mean_c(((teacher - mean) / std - student[:, :C])^2)`` and
    ``map_ae = mean_c((autoencoder - student[:, C:])^2)``, each [B, 1, h, w] in float32
    (float64 for float64 inputs). Training uses them for the validation quantiles.

    Args:
        teacher: raw teacher output [B, C, h, w].
        teacher_mean, teacher_std: per-channel statistics [C] (any float dtype).
        student: student output [B, 2C, h, w].
        autoencoder: autoencoder output [B, C, h, w].
    """
    _check_feature_tensors(
        teacher=teacher, teacher_mean=teacher_mean, teacher_std=teacher_std, student=student, autoencoder=autoencoder
    )
    _checks.inference_only("anomaly_maps_raw", teacher=teacher, student=student, autoencoder=autoencoder)
    return RawMaps(*_ops.anomaly_maps_raw(teacher, teacher_mean, teacher_std, student, autoencoder))


def anomaly_maps(
    teacher: Tensor,
    teacher_mean: Tensor,
    teacher_std: Tensor,
    student: Tensor,
    autoencoder: Tensor,
    quantiles: Tensor,
    output_size: tuple[int, int] | None = None,
    pad: int = 0,
) -> AnomalyMaps:
    """The inference hot path of Algorithm 2 (lines 2-12) fused in one op.

    Computes the raw maps as :func:`anomaly_maps_raw` without materialising any [C, h, w]
    intermediate, zero-pads them by ``pad`` feature pixels per side (4 for unpadded PDNs, so
    the maps align with the image), resizes them bilinearly (align_corners=False) to
    ``output_size``, normalises each as ``0.1 * (m - q_a) / (q_b - q_a)``, averages them
    0.5/0.5 and returns the map and its per-image maximum.

    Args:
        teacher, teacher_mean, teacher_std, student, autoencoder: as :func:`anomaly_maps_raw`.
        quantiles: tensor [4] = ``[q_st_a, q_st_b, q_ae_a, q_ae_b]`` on the features' device
            (a tensor, so CUDA graphs can capture the call).
        output_size: (H, W) of the returned map; default: the padded feature size.
        pad: zero border added around the raw maps before resizing, >= 0.

    Returns:
        ``AnomalyMaps(anomaly_map [B, 1, H, W], score [B])`` in float32 (float64 for float64
        inputs). NaN features give NaN map pixels and a NaN score.
    """
    _check_feature_tensors(
        teacher=teacher,
        teacher_mean=teacher_mean,
        teacher_std=teacher_std,
        student=student,
        autoencoder=autoencoder,
        quantiles=quantiles,
    )
    pad = _checks.integer(pad, "pad")
    if output_size is None:  # (a teacher of another rank gets C++'s error on its shape)
        output_size = (teacher.shape[-2] + 2 * pad, teacher.shape[-1] + 2 * pad) if teacher.dim() == 4 else (1, 1)
    if isinstance(output_size, (str, bytes)) or not isinstance(output_size, Sequence):
        raise TypeError(f"output_size must be two integers (H, W), got {output_size!r}")
    output_size = [_checks.integer(v, "output_size") for v in output_size]
    _checks.inference_only("anomaly_maps", teacher=teacher, student=student, autoencoder=autoencoder)
    return AnomalyMaps(
        *_ops.anomaly_maps(teacher, teacher_mean, teacher_std, student, autoencoder, quantiles, output_size, pad)
    )


def _fake_feature_checks(teacher: Tensor, student: Tensor, autoencoder: Tensor) -> None:
    _checks.fake_floating(teacher, "teacher")
    torch._check_value(
        teacher.dim() == 4, lambda: f"teacher must have 4 dimensions [B, C, h, w], got shape {tuple(teacher.shape)}"
    )
    b, c, h, w = teacher.shape
    torch._check_value(
        tuple(student.shape) == (b, 2 * c, h, w),
        lambda: (
            f"student must have shape {[b, 2 * c, h, w]} (twice the teacher's {c} channels), got {tuple(student.shape)}"
        ),
    )
    torch._check_value(
        autoencoder.shape == teacher.shape,
        lambda: f"autoencoder must have the teacher's shape {tuple(teacher.shape)}, got {tuple(autoencoder.shape)}",
    )


@torch.library.register_fake("efficientad::anomaly_maps_raw")
def _anomaly_maps_raw_fake(teacher, teacher_mean, teacher_std, student, autoencoder):
    _checks.fake_same_device(
        "anomaly_maps_raw",
        teacher=teacher,
        teacher_mean=teacher_mean,
        teacher_std=teacher_std,
        student=student,
        autoencoder=autoencoder,
    )
    _fake_feature_checks(teacher, student, autoencoder)
    b, _c, h, w = teacher.shape
    acc = _acc_dtype(teacher.dtype)
    return teacher.new_empty((b, 1, h, w), dtype=acc), teacher.new_empty((b, 1, h, w), dtype=acc)


@torch.library.register_fake("efficientad::anomaly_maps")
def _anomaly_maps_fake(teacher, teacher_mean, teacher_std, student, autoencoder, quantiles, output_size, pad):
    _checks.fake_same_device(
        "anomaly_maps",
        teacher=teacher,
        teacher_mean=teacher_mean,
        teacher_std=teacher_std,
        student=student,
        autoencoder=autoencoder,
        quantiles=quantiles,
    )
    _fake_feature_checks(teacher, student, autoencoder)
    torch._check_value(
        len(output_size) == 2 and min(output_size) > 0,
        lambda: f"output_size must be two positive integers (H, W), got {output_size}",
    )
    acc = _acc_dtype(teacher.dtype)
    b = teacher.shape[0]
    return teacher.new_empty((b, 1, output_size[0], output_size[1]), dtype=acc), teacher.new_empty((b,), dtype=acc)


# ----------------------------------------------------------------------------- PDN


def _check_layer_call(input: object, weight: object, bias: object, padding: object, pool_padding: object) -> None:
    _checks.tensor(input, "input")
    _checks.tensor(weight, "weight")
    if bias is not None:
        _checks.tensor(bias, "bias")
    _checks.integer(padding, "padding")
    _checks.integer(pool_padding, "pool_padding")


def conv2d_relu_pool(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 0,
    relu: bool = True,
    pool: bool = False,
    pool_padding: int = 0,
) -> Tensor:
    """One PDN layer: ``avg_pool2d(relu(conv2d(input, weight, bias, padding)), 2, 2, pool_padding)``
    with ReLU and pooling fused into one pass over the convolution output (inference only).

    Args:
        input: [B, C_in, H, W]; weight: [C_out, C_in, k, k] (same dtype); bias: [C_out] or None.
        padding: zero padding of the convolution (stride 1).
        relu: apply ReLU. pool: apply 2x2 average pooling with stride 2 and zero padding
            ``pool_padding`` (0 or 1; padded zeros count towards the average).
    """
    _check_layer_call(input, weight, bias, padding, pool_padding)
    _checks.inference_only("conv2d_relu_pool", input=input, weight=weight, bias=bias)
    return _ops.conv2d_relu_pool(input, weight, bias, padding, relu, pool, pool_padding)


def conv2d_relu_pool_split(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    padding: int,
    relu: bool,
    pool: bool,
    pool_padding: int,
    split: int,
) -> tuple[Tensor, Tensor]:
    """:func:`conv2d_relu_pool` with all of ``weight``'s output channels, returned as two dense
    channels-last tensors: channels ``[0, split)`` and ``[split, C_out)`` (the teacher and student
    first layers as one convolution, with no channel-slice copies after it). Inference only."""
    _check_layer_call(input, weight, bias, padding, pool_padding)
    split = _checks.integer(split, "split")
    _checks.inference_only("conv2d_relu_pool_split", input=input, weight=weight, bias=bias)
    return _ops.conv2d_relu_pool_split(input, weight, bias, padding, relu, pool, pool_padding, split)


@torch.library.register_fake("efficientad::conv2d_relu_pool")
def _conv2d_relu_pool_fake(input, weight, bias, padding, relu, pool, pool_padding):
    _checks.fake_same_device("conv2d_relu_pool", input=input, weight=weight, bias=bias)
    _fake_layer_checks(input, weight.shape[1], weight.shape[2], weight.shape[3], padding, pool, pool_padding)
    h = conv_output_size(input.shape[2], weight.shape[2], padding, pool, pool_padding)
    w = conv_output_size(input.shape[3], weight.shape[3], padding, pool, pool_padding)
    return input.new_empty((input.shape[0], weight.shape[0], h, w)).contiguous(memory_format=torch.channels_last)


def _fake_layer_checks(
    input: Tensor, in_channels: int, kh: int, kw: int, padding: int, pool: bool, pool_padding: int
) -> None:
    _checks.fake_floating(input, "input")
    torch._check_value(
        input.dim() == 4 and input.shape[1] == in_channels,
        lambda: f"input must be [B, {in_channels}, H, W], got shape {tuple(input.shape)}",
    )
    oh, ow = (conv_output_size(input.shape[i], k, padding) for i, k in ((2, kh), (3, kw)))
    torch._check_value(
        oh > 0 and ow > 0 and (not pool or min(oh, ow) + 2 * pool_padding >= 2),
        lambda: (
            f"input of spatial size {tuple(input.shape[2:])} is too small for a {kh}x{kw} kernel with padding {padding}"
        ),
    )


def conv_output_size(size: int, kernel_size: int, padding: int, pool: bool = False, pool_padding: int = 0) -> int:
    """Output side of a stride-1 convolution, then (``pool``) a 2x2 stride-2 average pooling
    (Python's one copy of ``csrc/common/pdn_epilogue.h``'s formulas: the fake kernels and
    :meth:`efficientad_ext.PDN.output_size`)."""
    size = size + 2 * padding - kernel_size + 1
    return (size + 2 * pool_padding - 2) // 2 + 1 if pool else size


@torch.library.register_fake("efficientad::conv2d_relu_pool_split")
def _conv2d_relu_pool_split_fake(input, weight, bias, padding, relu, pool, pool_padding, split):
    b, c, h, w = _conv2d_relu_pool_fake(input, weight, bias, padding, relu, pool, pool_padding).shape
    cl = torch.channels_last
    return input.new_empty((b, split, h, w)).contiguous(memory_format=cl), input.new_empty(
        (b, c - split, h, w)
    ).contiguous(memory_format=cl)


@torch.library.register_fake("efficientad::pdn_forward")
def _pdn_forward_fake(input, weights, biases, paddings, relus, pools, pool_paddings):
    _checks.fake_same_device("pdn_forward", input=input, weights=weights, biases=biases)
    _checks.fake_floating(input, "input")
    torch._check_value(
        len(weights) > 0 and input.dim() == 4, lambda: "pdn_forward needs a [B, C, H, W] input and at least one layer"
    )
    h, w = input.shape[2], input.shape[3]
    for weight, padding, pool, pool_padding in zip(weights, paddings, pools, pool_paddings):
        h = conv_output_size(h, weight.shape[2], padding, pool, pool_padding)
        w = conv_output_size(w, weight.shape[3], padding, pool, pool_padding)
        torch._check_value(
            h > 0 and w > 0, lambda: f"input image size {tuple(input.shape[2:])} is too small for these layers"
        )
    out = input.new_empty((input.shape[0], weights[-1].shape[0], h, w))
    return out.contiguous(memory_format=torch.channels_last)


def pdn_forward(
    input: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    paddings: Sequence[int],
    relus: Sequence[bool],
    pools: Sequence[bool],
    pool_paddings: Sequence[int],
) -> Tensor:
    """A stack of :func:`conv2d_relu_pool` layers in one op call (a PDN: see
    :meth:`efficientad_ext.PDN.fused_forward`, which passes its layers). One entry per layer
    in every list; ``input`` [B, C_in, H, W] is made channels-last once and every layer keeps
    that layout. Inference only; returns a channels-last tensor."""
    _checks.tensor(input, "input")
    for name, values in (("paddings", paddings), ("pool_paddings", pool_paddings)):
        for v in values:
            _checks.integer(v, name)
    _checks.inference_only("pdn_forward", input=input)
    return _ops.pdn_forward(
        input, list(weights), list(biases), list(paddings), list(relus), list(pools), list(pool_paddings)
    )


# ----------------------------------------------------------------------------- Winograd


def winograd_conv2d(
    input: Tensor,
    prepared: WinogradWeights,
    padding: int = 0,
    relu: bool = False,
    pool: bool = False,
    pool_padding: int = 0,
) -> Tensor:
    """``avg_pool2d(relu(conv2d(input, w, b, padding)))`` (ReLU and pooling optional) by
    Winograd's minimal filtering, for float32/float64 CPU inference.

    Args:
        input: [B, C_in, H, W] float32/float64 on the CPU (any strides with unit channel
            stride are read in place, e.g. a channel slice of a channels-last tensor).
        prepared: ``w`` and ``b`` transformed once by
            :func:`efficientad_ext.inference.winograd.prepare_weights`.
        padding, relu, pool, pool_padding: as :func:`conv2d_relu_pool`.

    Returns:
        A channels-last tensor equal to :func:`efficientad_ext.ops.reference.winograd_conv2d` up to
        rounding (~1e-6 of the output's magnitude in float32).
    """
    _checks.tensor(input, "input")
    _checks.integer(padding, "padding")
    _checks.integer(pool_padding, "pool_padding")
    # The op has a CPU kernel only: without this the dispatcher's error would not say so.
    if input.device.type != "cpu":
        raise ValueError(f"winograd_conv2d runs on the CPU only, got input on {input.device}")
    _checks.inference_only("winograd_conv2d", input=input)
    return _ops.winograd_conv2d(
        input,
        prepared.weight_tf,
        prepared.bias,
        prepared.input_tf,
        prepared.output_tf,
        prepared.kernel_size,
        padding,
        relu,
        pool,
        pool_padding,
    )


@torch.library.register_fake("efficientad::winograd_conv2d")
def _winograd_conv2d_fake(input, weight_tf, bias, input_tf, output_tf, kernel_size, padding, relu, pool, pool_padding):
    _checks.fake_same_device(
        "winograd_conv2d", input=input, weight_tf=weight_tf, bias=bias, input_tf=input_tf, output_tf=output_tf
    )
    _fake_layer_checks(input, weight_tf.shape[1], kernel_size, kernel_size, padding, pool, pool_padding)
    h = conv_output_size(input.shape[2], kernel_size, padding, pool, pool_padding)
    w = conv_output_size(input.shape[3], kernel_size, padding, pool, pool_padding)
    out = input.new_empty((input.shape[0], weight_tf.shape[2], h, w))
    return out.contiguous(memory_format=torch.channels_last)
