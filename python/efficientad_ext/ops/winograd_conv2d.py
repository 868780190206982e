"""``winograd_conv2d``: a PDN layer by Winograd's minimal filtering (CPU inference), with its fake kernel.

Preconditions and NaN semantics: see the package docstring (:mod:`efficientad_ext.ops`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks
from efficientad_ext.ops.conv_layers import conv_output_size, fake_layer_checks

if TYPE_CHECKING:
    from efficientad_ext.inference.winograd import WinogradWeights

_ops = torch.ops.efficientad


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

    Non-finite input: Winograd's transforms mix every input of a tile into every output of it,
    so one NaN or inf would turn its whole output tiles non-finite (75 NaN outputs where the
    direct convolution gives 27, inf turned into NaN). The op therefore scans its input (one
    vectorised pass, inside the kernel, so a ``torch.compile``'d call behaves the same) and runs
    the direct convolution with ``prepared.weight`` when it holds NaN or inf: the non-finite
    outputs are exactly the reference's. (The raw ``torch.ops.efficientad.winograd_conv2d``
    called without its ``weight`` argument spreads a non-finite input to its whole output tiles.)
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
        prepared.weight,
    )


@torch.library.register_fake("efficientad::winograd_conv2d")
def _winograd_conv2d_fake(
    input, weight_tf, bias, input_tf, output_tf, kernel_size, padding, relu, pool, pool_padding, weight=None
):
    _checks.fake_same_device(
        "winograd_conv2d",
        input=input,
        weight_tf=weight_tf,
        bias=bias,
        input_tf=input_tf,
        output_tf=output_tf,
        weight=weight,
    )
    fake_layer_checks(input, weight_tf.shape[1], kernel_size, kernel_size, padding, pool, pool_padding)
    h = conv_output_size(input.shape[2], kernel_size, padding, pool, pool_padding)
    w = conv_output_size(input.shape[3], kernel_size, padding, pool, pool_padding)
    out = input.new_empty((input.shape[0], weight_tf.shape[2], h, w))
    return out.contiguous(memory_format=torch.channels_last)
