"""The PDN layers: ``conv2d_relu_pool``, ``conv2d_relu_pool_split`` and the whole-stack
``pdn_forward``, with their fake kernels.

Preconditions and NaN semantics: see the package docstring (:mod:`efficientad_ext.ops`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks

_ops = torch.ops.efficientad


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
    fake_layer_checks(input, weight.shape[1], weight.shape[2], weight.shape[3], padding, pool, pool_padding)
    h = conv_output_size(input.shape[2], weight.shape[2], padding, pool, pool_padding)
    w = conv_output_size(input.shape[3], weight.shape[3], padding, pool, pool_padding)
    return input.new_empty((input.shape[0], weight.shape[0], h, w)).contiguous(memory_format=torch.channels_last)


def fake_layer_checks(
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
