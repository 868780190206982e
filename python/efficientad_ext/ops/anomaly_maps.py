"""``anomaly_maps_raw`` and ``anomaly_maps``: Algorithm 2's two maps, fused, and their fake kernels.

Preconditions and NaN semantics: see the package docstring (:mod:`efficientad_ext.ops`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks
from efficientad_ext.ops.arg_checks import accumulation_dtype as _acc_dtype

_ops = torch.ops.efficientad


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


def _fake_feature_checks(
    op: str, teacher: Tensor, teacher_mean: Tensor, teacher_std: Tensor, student: Tensor, autoencoder: Tensor, **more
) -> None:
    """The checks both maps ops' fake kernels make: one device for every tensor argument
    (``more``: the op's other tensors, by name), the feature shapes and the dtype."""
    _checks.fake_same_device(
        op,
        teacher=teacher,
        teacher_mean=teacher_mean,
        teacher_std=teacher_std,
        student=student,
        autoencoder=autoencoder,
        **more,
    )
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
    _fake_feature_checks("anomaly_maps_raw", teacher, teacher_mean, teacher_std, student, autoencoder)
    b, _c, h, w = teacher.shape
    acc = _acc_dtype(teacher.dtype)
    return teacher.new_empty((b, 1, h, w), dtype=acc), teacher.new_empty((b, 1, h, w), dtype=acc)


@torch.library.register_fake("efficientad::anomaly_maps")
def _anomaly_maps_fake(teacher, teacher_mean, teacher_std, student, autoencoder, quantiles, output_size, pad):
    _fake_feature_checks("anomaly_maps", teacher, teacher_mean, teacher_std, student, autoencoder, quantiles=quantiles)
    torch._check_value(
        len(output_size) == 2 and min(output_size) > 0,
        lambda: f"output_size must be two positive integers (H, W), got {output_size}",
    )
    acc = _acc_dtype(teacher.dtype)
    b = teacher.shape[0]
    return teacher.new_empty((b, 1, output_size[0], output_size[1]), dtype=acc), teacher.new_empty((b,), dtype=acc)
