"""The training networks' convolutions, by Winograd on the CPU where a layer qualifies.

:class:`~efficientad_ext.models.pdn.PDN` and :class:`~efficientad_ext.models.autoencoder.Autoencoder`
carry a ``cpu_winograd`` switch (not in their state dicts; the training and distillation configs
set it per run). With it on, and the input float32 / float64 on the CPU outside autocast, every
layer :func:`efficientad_ext.ops.winograd_trainable_layer` accepts runs forward and backward by
:func:`efficientad_ext.ops.winograd_conv2d_trainable` (the same function up to ~1e-6 relative
rounding; its output is channels-last); every other module runs as itself.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from efficientad_ext import ops


def winograd_applies(enabled: bool, x: Tensor) -> bool:
    """Whether a network with ``cpu_winograd == enabled`` runs its qualifying layers by
    Winograd on ``x``."""
    return enabled and ops.winograd_trainable_input(x)


def convolve(
    conv: nn.Conv2d, x: Tensor, winograd: bool, weight: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """``conv`` applied to ``x``: by Winograd when ``winograd`` and the layer qualifies, else as
    the module itself. ``weight`` / ``bias``: a slice of its output channels instead of its own
    (the PDN's split last layer, zero-padded like every PDN layer)."""
    if winograd and ops.winograd_trainable_layer(conv):
        if weight is None:
            weight, bias = conv.weight, conv.bias
        return ops.winograd_conv2d_trainable(x, weight, bias, conv.padding[0])
    if weight is None:
        return conv(x)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def run_sequential(modules: nn.Sequential, x: Tensor, winograd: bool) -> Tensor:
    """``modules(x)``, with its convolutions through :func:`convolve`."""
    for module in modules:
        x = convolve(module, x, winograd) if isinstance(module, nn.Conv2d) else module(x)
    return x
