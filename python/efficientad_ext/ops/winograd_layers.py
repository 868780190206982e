"""Which ``nn.Conv2d`` layers the Winograd ops compute: one rule for inference's plans
(:mod:`efficientad_ext.inference.cpu_winograd`) and training's layers
(:func:`efficientad_ext.ops.winograd_trainable_layer`), so the two paths cannot drift apart."""

from __future__ import annotations

from collections.abc import Container

from torch import nn

# Below this many input channels the transforms cost more than the multiplications they save
# (the PDNs' 3-channel first layer stays a direct convolution).
MIN_CHANNELS = 32


def winograd_layer(conv: nn.Conv2d, kernel_sizes: Container[int], *, backward: bool = False) -> bool:
    """Whether ``conv`` runs by Winograd: a square kernel of a size in ``kernel_sizes`` (those a
    tile set covers), stride 1, no dilation or groups, equal zero padding on both axes, at least
    :data:`MIN_CHANNELS` input channels. ``backward``: also padding at most ``r - 1``, because the
    input gradient is then the convolution with the flipped kernel and padding ``r - 1 - p``."""
    k = conv.kernel_size
    padding = conv.padding
    return (
        k[0] == k[1]
        and k[0] in kernel_sizes
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(padding, tuple)
        and padding[0] == padding[1]
        and (not backward or padding[0] <= k[0] - 1)
        and conv.padding_mode == "zeros"
        and conv.in_channels >= MIN_CHANNELS
    )
