"""The CPU inference networks: Winograd convolutions with weights transformed once.

``EfficientAD.infer`` on the CPU in float32 (or float64) runs the teacher, student and
autoencoder through :func:`forward`: every stride-1 3x3 / 4x4 convolution with at least
:data:`MIN_CHANNELS` input channels runs as :func:`efficientad_ext.winograd.winograd_conv2d`
(about 4x fewer multiplications; see that module), the rest (the PDNs' 3-channel first layer,
the autoencoder's stride-2 encoder, 1x1 convolutions) as before, all channels-last. Results
equal the direct convolutions up to float32 rounding (tests/test_cpu_inference.py).

Invariants:

* The plan (transformed weights) is built once per set of networks and cached on the model;
  it is rebuilt when any source parameter changes storage or version (optimiser steps,
  ``load_state_dict``, ``copy_``): a fingerprint of (data_ptr, _version) of every tensor.
* The teacher's and student's first layers (same shape, same input) run as one convolution
  with concatenated weights; the following Winograd layers read their halves in place.
* ``EFFICIENTAD_CPU_WINOGRAD=0`` in the environment (read at each call), or
  :func:`set_enabled(False) <set_enabled>`, turns the path off: ``infer`` then runs the
  direct oneDNN convolutions (``pdn_forward``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .autoencoder import decoder_sizes
from .pdn import PDN
from .winograd import DEFAULT_TILE, WinogradWeights, prepare_weights, winograd_conv2d

if TYPE_CHECKING:
    from .autoencoder import Autoencoder

# Below this many input channels the transforms cost more than the multiplications they save.
MIN_CHANNELS = 32
_CACHE_ATTR = "_cpu_inference_plan"
_enabled: bool | None = None  # None: follow EFFICIENTAD_CPU_WINOGRAD
_bf16_warned = False


def set_enabled(enabled: bool | None) -> None:
    """Turns the Winograd CPU path on or off for this process (``None``: follow the
    ``EFFICIENTAD_CPU_WINOGRAD`` environment variable, default on)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("EFFICIENTAD_CPU_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


def applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`forward` is used for inference on ``device`` in ``dtype``."""
    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        warn_if_slow_bfloat16()
    return dtype in (torch.float32, torch.float64) and enabled()


def warn_if_slow_bfloat16() -> None:
    """bfloat16 convolutions on a CPU without native bfloat16 instructions (e.g. AVX2 only)
    fall back to a slow reference path in ATen: warn once, so the user picks float32."""
    global _bf16_warned
    if _bf16_warned:
        return
    _bf16_warned = True
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if supported is not None and not supported():
        warnings.warn(
            "bfloat16 inference on this CPU is slow: it has no native bfloat16 instructions (oneDNN "
            "cannot run bfloat16 convolutions), so they fall back to a reference path ~10x slower "
            "than float32. Use dtype=torch.float32 on this CPU.",
            RuntimeWarning,
            stacklevel=3,
        )


@dataclass
class _Layer:
    """One convolution: Winograd (``wino``) or direct (``weight``/``bias``, channels-last)."""

    wino: WinogradWeights | None
    weight: Tensor | None
    bias: Tensor | None
    padding: int
    relu: bool
    pool: bool
    pool_padding: int

    def __call__(self, x: Tensor) -> Tensor:
        if self.wino is not None:
            return winograd_conv2d(x, self.wino, self.padding, self.relu, self.pool, self.pool_padding)
        return ops.conv2d_relu_pool(x, self.weight, self.bias, self.padding, self.relu, self.pool, self.pool_padding)


def _winograd_eligible(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (
        k[0] == k[1]
        and k[0] in DEFAULT_TILE
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
        and conv.in_channels >= MIN_CHANNELS
    )


def _layer(conv: nn.Conv2d, relu: bool, pool: bool = False, pool_padding: int = 0, weight: Tensor | None = None,
           bias: Tensor | None = None) -> _Layer:
    w = conv.weight.detach() if weight is None else weight
    b = (None if conv.bias is None else conv.bias.detach()) if bias is None else bias
    if weight is None and _winograd_eligible(conv):
        return _Layer(prepare_weights(w, b), None, None, conv.padding[0], relu, pool, pool_padding)
    return _Layer(None, w.contiguous(memory_format=torch.channels_last), b, conv.padding[0], relu, pool, pool_padding)


def _pdn_layers(pdn: PDN) -> list[_Layer]:
    return [_layer(conv, s.relu, s.pool, s.pool_padding) for conv, s in zip(pdn.convolutions(), pdn.specs)]


class _AutoencoderPlan:
    """The autoencoder's forward (eval mode: dropout is the identity) with planned layers."""

    def __init__(self, ae: Autoencoder) -> None:
        enc = [m for m in ae.encoder if isinstance(m, nn.Conv2d)]
        # Encoder: stride-2 convolutions with ReLU, then the 8x8 code convolution (no ReLU).
        self.encoder = [(conv, i < len(enc) - 1) for i, conv in enumerate(enc)]
        self.decoder = [_layer(stage[0], relu=True) for stage in ae.decoder_stages]
        self.head = [_layer(ae.head[0], relu=True), _layer(ae.head[2], relu=False)]

    def __call__(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        height, width = x.shape[-2:]
        if height < 256 or width < 256:
            raise ValueError(f"the autoencoder needs images of at least 256x256, got {height}x{width}")
        code = x.contiguous(memory_format=torch.channels_last)
        for conv, relu in self.encoder:
            code = conv(code)
            if relu:
                code = F.relu_(code)
        for layer, sh, sw in zip(self.decoder, decoder_sizes(height), decoder_sizes(width)):
            code = layer(F.interpolate(code, size=(sh, sw), mode="bilinear", align_corners=False))
        code = F.interpolate(code, size=tuple(output_size), mode="bilinear", align_corners=False)
        for layer in self.head:
            code = layer(code)
        return code


class CpuPlan:
    """Teacher, student and autoencoder of one set of networks, ready for CPU inference."""

    def __init__(self, teacher: PDN, student: PDN, autoencoder: Autoencoder, fingerprint: tuple) -> None:
        self.fingerprint = fingerprint
        self.shared_first = teacher.specs[0] == student.specs[0]
        if self.shared_first:
            t0, s0 = teacher.convolutions()[0], student.convolutions()[0]
            first = _layer(
                t0, teacher.specs[0].relu, teacher.specs[0].pool, teacher.specs[0].pool_padding,
                weight=torch.cat([t0.weight.detach(), s0.weight.detach()]),
                bias=torch.cat([t0.bias.detach(), s0.bias.detach()]),
            )
            self.first = first
            self.split = teacher.specs[0].out_channels
            self.teacher = _pdn_layers(teacher)[1:]
            self.student = _pdn_layers(student)[1:]
        else:
            self.teacher = _pdn_layers(teacher)
            self.student = _pdn_layers(student)
        self.autoencoder = _AutoencoderPlan(autoencoder)

    def teacher_student(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.shared_first:
            both = self.first(x)
            t, s = both[:, : self.split], both[:, self.split :]
        else:
            t = s = x
        for layer in self.teacher:
            t = layer(t)
        for layer in self.student:
            s = layer(s)
        return t, s


def _fingerprint(modules: tuple[nn.Module, ...]) -> tuple:
    return tuple((t.data_ptr(), t._version) for m in modules for t in (*m.parameters(), *m.buffers()))


def plan_for(owner: nn.Module, teacher: PDN, student: PDN, autoencoder: Autoencoder) -> CpuPlan:
    """The cached plan of these networks (stored on ``owner``), rebuilt when a weight changed."""
    fingerprint = _fingerprint((teacher, student, autoencoder))
    cache: dict[tuple[int, ...], CpuPlan] = owner.__dict__.setdefault(_CACHE_ATTR, {})
    key = (id(teacher), id(student), id(autoencoder))
    plan = cache.get(key)
    if plan is None or plan.fingerprint != fingerprint:
        with torch.no_grad():
            plan = CpuPlan(teacher, student, autoencoder, fingerprint)
        cache.clear()  # one plan per model: the networks of the dtype in use
        cache[key] = plan
    return plan


@torch.no_grad()
def forward(
    owner: nn.Module, teacher: PDN, student: PDN, autoencoder: Autoencoder, x: Tensor, feature_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(teacher(x), student(x), autoencoder(x))`` for CPU inference, all channels-last."""
    plan = plan_for(owner, teacher, student, autoencoder)
    t, s = plan.teacher_student(x)
    return t, s, plan.autoencoder(x, feature_size)
