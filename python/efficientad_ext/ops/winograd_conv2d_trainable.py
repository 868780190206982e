"""``winograd_conv2d_trainable``: a stride-1 convolution whose forward *and* backward run by
Winograd's minimal filtering on the CPU (float32/float64), for training the PDNs there.

Why: on CPUs without native bf16 (AVX2 only), a float32 PDN training or distillation step spends
nearly all its time in oneDNN's convolutions, forward and backward, already close to the FMA
peak (benchmarks/RESULTS.md, session 18). Winograd's F(m x m, r x r) needs 5-6x fewer
multiplications with the default 8x8 tiles, in all three products of a layer:

* forward: ``efficientad::winograd_conv2d`` with ``U = G w G^T`` (recomputed from the current
  weight at every call: the weight changes every step);
* input gradient: the same op on the output gradient, with the flipped, transposed weight and
  padding ``r - 1 - padding`` (a stride-1 convolution's input gradient is that convolution);
* weight gradient: ``efficientad::winograd_conv2d_weight_grad``, back-propagation through the
  same F(m x m, r x r) (``G^T (sum over tiles of V^T D) G``, see its C++ file).

The result equals ``F.conv2d(input, weight, bias, padding=padding)`` and its gradients up to
rounding (~1e-6 of their magnitude in float32; tests/test_winograd_training.py). The output is
channels-last. Bias, ReLU and pooling are left to torch (cheap, memory-bound). Double
backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from efficientad_ext.ops import arg_checks as _checks
from efficientad_ext.ops.winograd_layers import winograd_layer
from efficientad_ext.ops.winograd_matrices import DEFAULT_TILE, transform_tensors, transform_weight

_ops = torch.ops.efficientad


@torch.library.custom_op("efficientad::winograd_conv2d_trainable", mutates_args=())
def _winograd_conv2d_trainable(input: Tensor, weight: Tensor, bias: Tensor | None, padding: int, tile: int) -> Tensor:
    r = int(weight.shape[-1])
    bt, at, g = transform_tensors(tile, r, input.dtype)
    b = None if bias is None else bias.contiguous()
    return _ops.winograd_conv2d(
        input, transform_weight(weight, g), b, bt, at, r, padding, False, False, 0, weight.detach().contiguous()
    )


@_winograd_conv2d_trainable.register_fake
def _winograd_conv2d_trainable_fake(input, weight, bias, padding, tile):
    r = weight.shape[-1]
    h = input.shape[2] + 2 * padding - r + 1
    w = input.shape[3] + 2 * padding - r + 1
    out = input.new_empty((input.shape[0], weight.shape[0], h, w))
    return out.contiguous(memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, padding, tile = inputs
    ctx.save_for_backward(input, weight)
    ctx.padding, ctx.tile, ctx.has_bias = padding, tile, bias is not None


@torch.library.custom_op("efficientad::winograd_conv2d_trainable_backward", mutates_args=())
def _winograd_conv2d_trainable_backward(
    grad: Tensor, input: Tensor, weight: Tensor, padding: int, tile: int, input_grad: bool, weight_grad: bool
) -> tuple[Tensor, Tensor]:
    """(d loss / d input, d loss / d weight); one not asked for is an empty tensor. An op of its
    own, so that traced backward graphs (torch.compile) see one call, not the transform constants."""
    r = int(weight.shape[-1])
    bt, at, g = transform_tensors(tile, r, input.dtype)
    grad_input = grad_weight = input.new_empty(0)
    if input_grad:
        # The input gradient of a stride-1 convolution: the output gradient convolved with the
        # flipped kernel, input and output channels swapped, padded by r - 1 - padding. (No
        # untransformed weight: a non-finite gradient spreads over whole tiles, where the step
        # is lost anyway.)
        grad_input = _ops.winograd_conv2d(
            grad, transform_weight(weight, g, flipped=True), None, bt, at, r, r - 1 - padding, False, False, 0
        )
    if weight_grad:
        grad_weight = _ops.winograd_conv2d_weight_grad(input, grad, bt, at, g, r, padding)
    return grad_input, grad_weight


@_winograd_conv2d_trainable_backward.register_fake
def _winograd_conv2d_trainable_backward_fake(grad, input, weight, padding, tile, input_grad, weight_grad):
    grad_input = input.new_empty(input.shape).contiguous(memory_format=torch.channels_last) if input_grad else None
    grad_weight = weight.new_empty(weight.shape) if weight_grad else None
    empty = input.new_empty(0)
    return (empty if grad_input is None else grad_input, empty if grad_weight is None else grad_weight)


def _backward(ctx, grad: Tensor):
    input, weight = ctx.saved_tensors
    input_grad, weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input = grad_weight = grad_bias = None
    if input_grad or weight_grad:
        gi, gw = _winograd_conv2d_trainable_backward(
            grad, input, weight, ctx.padding, ctx.tile, input_grad, weight_grad
        )
        grad_input = gi if input_grad else None
        grad_weight = gw if weight_grad else None
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum(dim=(0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None


_winograd_conv2d_trainable.register_autograd(_backward, setup_context=_setup_context)


@torch.library.register_fake("efficientad::winograd_conv2d_weight_grad")
def _winograd_conv2d_weight_grad_fake(input, grad_output, input_tf, output_tf, weight_tf_matrix, kernel_size, padding):
    _checks.fake_same_device(
        "winograd_conv2d_weight_grad",
        input=input,
        grad_output=grad_output,
        input_tf=input_tf,
        output_tf=output_tf,
        weight_tf_matrix=weight_tf_matrix,
    )
    return input.new_empty((grad_output.shape[1], input.shape[1], kernel_size, kernel_size))


def winograd_trainable_input(x: Tensor) -> bool:
    """Whether ``x`` is an input the Winograd training path takes: float32 / float64 on the CPU,
    outside bf16 / fp16 autocast (there the direct convolution runs in the low precision)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")


def winograd_trainable_layer(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a layer :func:`winograd_conv2d_trainable` computes (forward and
    backward): the shared rule of :func:`~efficientad_ext.ops.winograd_layers.winograd_layer`
    for the default tile set's kernels (3x3, 4x4), padding at most ``r - 1``."""
    return winograd_layer(conv, DEFAULT_TILE, backward=True)


def trainable_tile(kernel_size: int) -> int | None:
    """The output tile of the default tile set for ``kernel_size`` x ``kernel_size`` kernels, or
    None when Winograd has none (the caller then keeps the direct convolution)."""
    return DEFAULT_TILE.get(kernel_size)


def winograd_conv2d_trainable(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0, tile: int | None = None
) -> Tensor:
    """``F.conv2d(input, weight, bias, padding=padding)`` (stride 1) with forward and both
    gradients by Winograd's F(tile x tile, r x r) on the CPU.

    Args:
        input: [B, C_in, H, W] float32/float64 on the CPU.
        weight: [C_out, C_in, r, r], same dtype, r a kernel size with a Winograd tile (3 or 4).
        bias: [C_out] or None.
        padding: zero padding on every side, at most ``r - 1`` (the input gradient's
            convolution pads by ``r - 1 - padding``).
        tile: the output tile m (default: the default tile set's, 8x8 input tiles).

    Returns:
        A channels-last [B, C_out, OH, OW] tensor, differentiable in ``input``, ``weight`` and
        ``bias``.
    """
    _checks.tensor(input, "input")
    _checks.floating(weight, "weight")
    _checks.rank(weight, 4, "weight", "[C_out, C_in, r, r]")
    if bias is not None:
        _checks.tensor(bias, "bias")
    padding = _checks.integer(padding, "padding")
    r = int(weight.shape[-1])
    if weight.shape[-2] != r:
        raise ValueError(f"weight must have a square kernel, got {tuple(weight.shape)}")
    m = trainable_tile(r) if tile is None else _checks.integer(tile, "tile")
    if m is None:
        raise ValueError(f"weight: no Winograd tile for {r}x{r} kernels (supported: 3x3, 4x4)")
    if input.device.type != "cpu":
        raise ValueError(f"winograd_conv2d_trainable runs on the CPU only, got input on {input.device}")
    if weight.dtype != input.dtype:
        raise TypeError(f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    if not 0 <= padding <= r - 1:
        raise ValueError(f"padding must be in [0, {r - 1}] for a {r}x{r} kernel, got {padding}")
    return _winograd_conv2d_trainable(input, weight, bias, padding, m)
