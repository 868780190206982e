"""Patch description networks (PDN), the teacher and student of EfficientAD.

Layouts follow the paper's Tables 6/7 as the peers build them (see shared notes), as an
``nn.Sequential`` with the same module indices as nelson1425/EfficientAD's, so published
state dicts load by key. ``padded=True`` is the paper's variant (256x256 -> 64x64 features);
``padded=False`` drops the convolution and pooling padding (256x256 -> 56x56), as the peers
do by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from efficientad_ext import ops
from efficientad_ext.models.trainable_conv import convolve, winograd_applies

PDN_ARCHITECTURES = ("small", "medium")
Architecture = Literal["small", "medium"]


@dataclass(frozen=True)
class ConvLayerSpec:
    """One PDN convolution and its fused epilogue."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int
    relu: bool
    pool: bool = False
    pool_padding: int = 0


def pdn_layer_specs(arch: Architecture, out_channels: int = 384, padded: bool = False) -> list[ConvLayerSpec]:
    """The convolutions of a PDN, in order. ``out_channels`` is 384 for a teacher and 768
    for a student."""
    m = 1 if padded else 0
    if arch == "small":
        return [
            ConvLayerSpec(3, 128, 4, 3 * m, True, True, m),
            ConvLayerSpec(128, 256, 4, 3 * m, True, True, m),
            ConvLayerSpec(256, 256, 3, m, True),
            ConvLayerSpec(256, out_channels, 4, 0, False),
        ]
    if arch == "medium":
        return [
            ConvLayerSpec(3, 256, 4, 3 * m, True, True, m),
            ConvLayerSpec(256, 512, 4, 3 * m, True, True, m),
            ConvLayerSpec(512, 512, 1, 0, True),
            ConvLayerSpec(512, 512, 3, m, True),
            ConvLayerSpec(512, out_channels, 4, 0, True),
            ConvLayerSpec(out_channels, out_channels, 1, 0, False),
        ]
    raise ValueError(f"arch must be one of {PDN_ARCHITECTURES}, got {arch!r}")


class PDN(nn.Sequential):
    """A PDN as ``nn.Sequential`` (Conv2d, ReLU, AvgPool2d modules).

    ``forward`` is the plain ``torch.nn`` network (used for training); :meth:`fused_forward`
    runs the same weights through the fused ``efficientad::pdn_forward`` op (inference).
    """

    def __init__(self, arch: Architecture = "small", out_channels: int = 384, padded: bool = False) -> None:
        self.arch = arch
        self.padded = padded
        self.out_channels = out_channels
        self.specs = pdn_layer_specs(arch, out_channels, padded)
        modules: list[nn.Module] = []
        for spec in self.specs:
            modules.append(nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, padding=spec.padding))
            if spec.relu:
                modules.append(nn.ReLU(inplace=True))
            if spec.pool:
                modules.append(nn.AvgPool2d(2, stride=2, padding=spec.pool_padding))
        super().__init__(*modules)
        # Training's convolutions by Winograd on the CPU (forward and backward; see
        # :func:`efficientad_ext.ops.winograd_conv2d_trainable`). Not part of the state dict: the
        # training and distillation configs set it for the run.
        self.cpu_winograd = False

    def forward(self, x: Tensor, heads: Sequence[tuple[int, int, int]] | None = None) -> Tensor | tuple[Tensor, ...]:
        """The network on ``x``; with ``heads``, only the output channels each part of the batch needs.

        ``heads``: ``(images, first_channel, end_channel)`` per consecutive group of the batch
        (the counts sum to the batch size). Every layer but the last runs on the whole batch; the
        last convolution runs once per group with only its output channels' weights, and a tuple
        of the groups' outputs is returned. Training uses it (Algorithm 1 reads the student's
        first C channels of the image and penalty outputs and its last C of the augmented
        image's): the unused half of the last layer is never computed, forwards or backwards,
        and the gradients equal the full layer's, whose unused channels would get zero. The last
        module of every PDN is a convolution without ReLU or pooling (Tables 6/7).

        With ``cpu_winograd`` set, on a float32 / float64 CPU input outside autocast, the layers
        :func:`efficientad_ext.ops.winograd_trainable_layer` accepts run (forward and backward)
        by :func:`efficientad_ext.ops.winograd_conv2d_trainable`: the same function up to ~1e-6
        relative rounding, 2x+ faster per training step on AVX2 CPUs (benchmarks/RESULTS.md,
        session 18); the output is then channels-last.
        """
        winograd = winograd_applies(self.cpu_winograd, x)
        if heads is None and not winograd:
            return super().forward(x)
        *body, last = self
        if heads is not None and sum(n for n, _, _ in heads) != x.shape[0]:
            raise ValueError(f"heads cover {sum(n for n, _, _ in heads)} images, the batch has {x.shape[0]}")
        for module in body:
            x = convolve(module, x, winograd) if isinstance(module, nn.Conv2d) else module(x)
        if heads is None:
            return convolve(last, x, winograd)
        outputs, start = [], 0
        for n, c0, c1 in heads:
            bias = None if last.bias is None else last.bias[c0:c1]
            outputs.append(convolve(last, x[start : start + n], winograd, last.weight[c0:c1], bias))
            start += n
        return tuple(outputs)

    def convolutions(self) -> list[nn.Conv2d]:
        return [m for m in self if isinstance(m, nn.Conv2d)]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the feature map for an input of height x width."""
        for s in self.specs:
            height = ops.conv_output_size(height, s.kernel_size, s.padding, s.pool, s.pool_padding)
            width = ops.conv_output_size(width, s.kernel_size, s.padding, s.pool, s.pool_padding)
        return height, width

    def layer_arguments(self, first: int = 0) -> tuple[list, list, list, list, list, list]:
        """:func:`efficientad_ext.ops.pdn_forward`'s per-layer lists (weights, biases, paddings,
        relus, pools, pool paddings) of the layers from index ``first`` on. The parameters are
        detached: the op is inference-only by definition."""
        convs, specs = self.convolutions()[first:], self.specs[first:]
        return (
            [c.weight.detach() for c in convs],
            [None if c.bias is None else c.bias.detach() for c in convs],
            [s.padding for s in specs],
            [s.relu for s in specs],
            [s.pool for s in specs],
            [s.pool_padding for s in specs],
        )

    @torch.no_grad()
    def fused_forward(self, x: Tensor, first: int = 0) -> Tensor:
        """Inference through the fused ``pdn_forward`` op (the layers from index ``first`` on);
        returns a channels-last tensor equal to ``self(x)`` (``first=0``)."""
        return ops.pdn_forward(x, *self.layer_arguments(first))


def build_pdn(arch: Architecture = "small", out_channels: int = 384, padded: bool = False) -> PDN:
    """A freshly initialised PDN (teacher: 384 output channels; student: 768)."""
    return PDN(arch, out_channels, padded)
