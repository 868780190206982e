"""The CPU inference networks: Winograd convolutions with weights transformed once.

``EfficientAD.infer`` on the CPU in float32 (or float64), with
``InferenceOptions.cpu_winograd`` on, runs the teacher, student and autoencoder through a
:class:`CpuWinogradPlan`: every stride-1 3x3 / 4x4 convolution with at least
:data:`~efficientad_ext.ops.winograd_layers.MIN_CHANNELS` input channels runs as ``efficientad::winograd_conv2d`` (4x to 6.25x fewer
multiplications, by the options' tile set; see :mod:`.winograd`), the rest (the PDNs' 3-channel first layer, the
autoencoder's stride-2 encoder, 1x1 convolutions) as direct convolutions, all channels-last.
Results equal the direct convolutions up to float32 rounding (tests/test_cpu_inference.py).

Invariants:

* A plan is derived from one :class:`~.networks.InferenceNetworks` entry and one tile set, and
  stored in the entry; the entry drops it whenever its weights change (one fingerprint,
  :mod:`.networks`), and :func:`plan_for` rebuilds it when asked for another tile set.
* The teacher's and student's first layers (same spec, same input) always run as one
  convolution with the entry's concatenated weights; the following Winograd layers read their
  halves in place.
* The autoencoder runs through :func:`efficientad_ext.models.autoencoder.run_autoencoder`, the same
  forward as the module's, with planned layers (eval mode: dropout is the identity).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efficientad_ext import ops
from efficientad_ext.inference.teacher_student import first_layers_fusable
from efficientad_ext.inference.winograd import DEFAULT_TILES, WinogradWeights, prepare_weights, tile_set
from efficientad_ext.models.autoencoder import Autoencoder, run_autoencoder
from efficientad_ext.models.pdn import PDN
from efficientad_ext.ops.winograd_layers import winograd_layer

_bf16_warned = False


def applies(device: torch.device, dtype: torch.dtype, enabled: bool) -> bool:
    """Whether a plan runs inference on ``device`` in ``dtype`` (``enabled``: the option)."""
    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        warn_if_slow_bfloat16()
    return enabled and dtype in (torch.float32, torch.float64)


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
            stacklevel=4,
        )


@dataclass
class _Layer:
    """One convolution: Winograd (``wino``) or direct (``weight``/``bias``, channels-last)."""

    wino: WinogradWeights | None
    weight: Tensor | None
    bias: Tensor | None
    padding: int
    relu: bool
    pool: bool = False
    pool_padding: int = 0

    def __call__(self, x: Tensor) -> Tensor:
        if self.wino is not None:
            return ops.winograd_conv2d(x, self.wino, self.padding, self.relu, self.pool, self.pool_padding)
        return ops.conv2d_relu_pool(x, self.weight, self.bias, self.padding, self.relu, self.pool, self.pool_padding)


def _layer(conv: nn.Conv2d, tiles: dict[int, int], relu: bool, pool: bool = False, pool_padding: int = 0) -> _Layer:
    w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    if winograd_layer(conv, tiles):
        tile = tiles[conv.kernel_size[0]]
        return _Layer(prepare_weights(w, b, tile=tile), None, None, conv.padding[0], relu, pool, pool_padding)
    return _Layer(None, w.contiguous(memory_format=torch.channels_last), b, conv.padding[0], relu, pool, pool_padding)


def _pdn_layers(pdn: PDN, tiles: dict[int, int]) -> list[_Layer]:
    return [_layer(conv, tiles, s.relu, s.pool, s.pool_padding) for conv, s in zip(pdn.convolutions(), pdn.specs)]


class PdnPlan:
    """One PDN's layers alone, planned as :class:`CpuWinogradPlan` plans them (no shared first
    layer): e.g. the frozen teacher in training's statistics pass. Build it after the weights
    are final; it keeps transformed copies and does not follow later changes."""

    def __init__(self, pdn: PDN, tiles: str = DEFAULT_TILES) -> None:
        with torch.no_grad():
            self.layers = _pdn_layers(pdn, tile_set(tiles))

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """``pdn(x)``, channels-last, up to float32 rounding."""
        for layer in self.layers:
            x = layer(x)
        return x


class _Encoder:
    """The autoencoder's encoder: stride-2 convolutions with ReLU, then the 8x8 code
    convolution (no ReLU), as oneDNN direct convolutions on channels-last input."""

    def __init__(self, ae: Autoencoder) -> None:
        convs = [m for m in ae.encoder if isinstance(m, nn.Conv2d)]
        self.convs = [(conv, i < len(convs) - 1) for i, conv in enumerate(convs)]

    def __call__(self, x: Tensor) -> Tensor:
        code = x.contiguous(memory_format=torch.channels_last)
        for conv, relu in self.convs:
            code = conv(code)
            if relu:
                code = F.relu_(code)
        return code


class CpuWinogradPlan:
    """Teacher, student and autoencoder of one set of networks, ready for CPU inference, with
    the Winograd tiles of ``tiles`` (a key of :data:`~.winograd.TILES`)."""

    def __init__(
        self,
        teacher: PDN,
        student: PDN,
        autoencoder: Autoencoder,
        first_layer: tuple[Tensor, Tensor],
        tiles: str = DEFAULT_TILES,
    ) -> None:
        tile_of = tile_set(tiles)
        self.tiles = tiles
        self.shared_first = first_layers_fusable(teacher, student)
        self.teacher, self.student = _pdn_layers(teacher, tile_of), _pdn_layers(student, tile_of)
        if self.shared_first:
            spec = teacher.specs[0]
            weight, bias = first_layer
            self.first = _Layer(
                None,
                weight.contiguous(memory_format=torch.channels_last),
                bias,
                spec.padding,
                spec.relu,
                spec.pool,
                spec.pool_padding,
            )
            self.split = spec.out_channels
            self.teacher, self.student = self.teacher[1:], self.student[1:]
        self.encoder = _Encoder(autoencoder)
        self.decoder = [_layer(stage[0], tile_of, relu=True) for stage in autoencoder.decoder_stages]
        head = [_layer(autoencoder.head[0], tile_of, relu=True), _layer(autoencoder.head[2], tile_of, relu=False)]
        self.head = lambda code: head[1](head[0](code))

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

    def autoencoder(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        return run_autoencoder(x, output_size, self.encoder, self.decoder, self.head)

    @torch.no_grad()
    def forward(self, x: Tensor, feature_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """``(teacher(x), student(x), autoencoder(x))``, all channels-last."""
        t, s = self.teacher_student(x)
        return t, s, self.autoencoder(x, feature_size)


def plan_for(nets, tiles: str = DEFAULT_TILES) -> CpuWinogradPlan:
    """The plan of one cache entry (:class:`~.networks.InferenceNetworks`) with the Winograd
    tile set ``tiles``, built on first use and again when another tile set is asked for."""
    if nets.cpu_plan is None or nets.cpu_plan.tiles != tiles:
        with torch.no_grad():
            nets.cpu_plan = CpuWinogradPlan(nets.teacher, nets.student, nets.autoencoder, nets.first_layer, tiles)
    return nets.cpu_plan
