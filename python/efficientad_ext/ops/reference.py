"""Plain-PyTorch references of every ``efficientad`` op: the definitions the kernels are
tested against, in the order of operations anomalib and the paper's code use.

They materialise every intermediate and use ``torch.quantile`` (sort-based, limited to
2^24 elements), which is exactly what the fused kernels avoid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from efficientad_ext.ops.arg_checks import accumulation_dtype


def _acc(t: Tensor) -> Tensor:
    return t.to(accumulation_dtype(t.dtype))


def quantile(input: Tensor, q: float | Sequence[float]) -> Tensor:
    """``torch.quantile`` of all elements (computed in float32/float64); input dtype out."""
    x = _acc(input).flatten()
    qs = torch.as_tensor(q, dtype=x.dtype, device=x.device)
    return torch.quantile(x, qs).to(input.dtype)


def hard_feature_loss(teacher: Tensor, student: Tensor, p: float = 0.999, reduction: str = "batch") -> Tensor:
    """Mean of the elements of ``d = (teacher - student)^2`` at or above ``d``'s p-quantile;
    one threshold for the batch, or one per sample (then the mean of the per-sample losses)."""
    d = (_acc(teacher) - _acc(student)) ** 2
    if reduction == "batch":
        threshold = torch.quantile(d.detach(), p)
        return d[d >= threshold].mean()
    losses = []
    for d_b in d:
        threshold = torch.quantile(d_b.detach(), p)
        losses.append(d_b[d_b >= threshold].mean())
    return torch.stack(losses).mean()


def anomaly_maps_raw(
    teacher: Tensor, teacher_mean: Tensor, teacher_std: Tensor, student: Tensor, autoencoder: Tensor
) -> tuple[Tensor, Tensor]:
    """Algorithm 2, lines 2-7: the channel-mean squared-difference maps [B, 1, h, w]."""
    c = teacher.shape[1]
    t = _acc(teacher)
    mean = teacher_mean.to(t.dtype).reshape(1, c, 1, 1)
    std = teacher_std.to(t.dtype).reshape(1, c, 1, 1)
    t_hat = (t - mean) / std
    s = _acc(student)
    map_st = ((t_hat - s[:, :c]) ** 2).mean(dim=1, keepdim=True)
    map_ae = ((_acc(autoencoder) - s[:, c:]) ** 2).mean(dim=1, keepdim=True)
    return map_st, map_ae


def pad_and_resize(m: Tensor, border: int, size: Sequence[int]) -> Tensor:
    """A raw map [B, 1, h, w] with a zero border of ``border`` cells, resized bilinearly to
    ``size``: the map geometry of Algorithm 2 (the fused ``anomaly_maps`` kernel does the same
    in one pass; unpadded PDNs' maps need the border to line up with the image)."""
    if border:
        m = F.pad(m, (border,) * 4)
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)


def normalize_map(m: Tensor, q_a: Tensor, q_b: Tensor) -> Tensor:
    """Algorithm 2's quantile normalisation of one map: ``0.1 (m - q_a) / (q_b - q_a)``."""
    return 0.1 * (m - q_a) / (q_b - q_a)


def anomaly_maps(
    teacher: Tensor,
    teacher_mean: Tensor,
    teacher_std: Tensor,
    student: Tensor,
    autoencoder: Tensor,
    quantiles: Tensor,
    output_size: tuple[int, int] | None = None,
    pad: int = 0,
) -> tuple[Tensor, Tensor]:
    """Algorithm 2 after the networks, in anomalib's order: raw maps, zero padding,
    bilinear resize, quantile normalisation, 0.5/0.5 sum, max per image."""
    map_st, map_ae = anomaly_maps_raw(teacher, teacher_mean, teacher_std, student, autoencoder)
    if output_size is None:
        output_size = (map_st.shape[-2] + 2 * pad, map_st.shape[-1] + 2 * pad)
    q = quantiles.to(map_st.dtype)
    map_st = normalize_map(pad_and_resize(map_st, pad, output_size), q[0], q[1])
    map_ae = normalize_map(pad_and_resize(map_ae, pad, output_size), q[2], q[3])
    combined = 0.5 * map_st + 0.5 * map_ae
    flat = combined.flatten(1)
    # torch.amax ignores nothing: NaN propagates, as the fused kernel does.
    return combined, flat.amax(dim=1)


def conv2d_relu_pool(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 0,
    relu: bool = True,
    pool: bool = False,
    pool_padding: int = 0,
) -> Tensor:
    """``avg_pool2d(relu(conv2d(...)), 2, 2, pool_padding)`` as separate torch ops."""
    y = F.conv2d(input, weight, bias, padding=padding)
    if relu:
        y = F.relu(y)
    if pool:
        y = F.avg_pool2d(y, 2, stride=2, padding=pool_padding)
    return y


def winograd_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int = 0,
    relu: bool = False,
    pool: bool = False,
    pool_padding: int = 0,
) -> Tensor:
    """What ``winograd_conv2d`` computes from the untransformed ``weight``: the direct
    convolution (:func:`conv2d_relu_pool`), channels-last as the op returns it."""
    return conv2d_relu_pool(input, weight, bias, padding, relu, pool, pool_padding).contiguous(
        memory_format=torch.channels_last
    )


def winograd_conv2d_trainable(input: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0) -> Tensor:
    """What ``winograd_conv2d_trainable`` computes, forward and backward: the direct stride-1
    convolution, channels-last as the op returns it."""
    return F.conv2d(input, weight, bias, padding=padding).contiguous(memory_format=torch.channels_last)


def winograd_conv2d_weight_grad(input: Tensor, grad_output: Tensor, kernel_size: int, padding: int = 0) -> Tensor:
    """What ``winograd_conv2d_weight_grad`` computes: the weight gradient of the direct stride-1
    convolution of ``input`` given ``grad_output``, [C_out, C_in, r, r]."""
    shape = (grad_output.shape[1], input.shape[1], kernel_size, kernel_size)
    return torch.nn.grad.conv2d_weight(input, shape, grad_output, padding=padding)
