"""The weight transform of ``efficientad::winograd_conv2d`` (the op: :func:`efficientad_ext.ops.winograd_conv2d`).

On CPUs without fast low-precision arithmetic (AVX2 only: bfloat16 convolutions fall back to
a slow ATen path there, ~10x slower than float32), the PDNs' float32 convolutions already run
in oneDNN close to the FMA peak. Winograd's minimal filtering F(m x m, r x r) computes the same
convolution with fewer multiplications: an m x m output tile from an a x a input tile
(a = m + r - 1) costs a*a products per channel pair instead of m*m*r*r. Two tile sets
(:data:`TILES`), both with tiles the op supports (a <= 8):

* ``"large"`` (the default): F(5x5, 4x4) for the PDNs' 4x4 layers and F(6x6, 3x3) for their
  3x3 layers, 8x8 input tiles: 6.25x and 5.06x fewer multiplications than the direct
  convolution. On an AVX2 EPYC (2 threads) the PDN-S Winograd layers ran 1.36x faster than
  with the small set and ``infer`` 1.3x at batch 1, 1.07x at batch 8 (benchmarks/RESULTS.md,
  session 17), at up to twice its (still ~1e-6) rounding error;
* ``"small"``: F(3x3, 4x4) and F(4x4, 3x3), 6x6 input tiles, 4x fewer multiplications.

The transform matrices come from the Toom-Cook construction on ``a - 1`` finite
interpolation points plus the point at infinity; they are computed here in exact rational
arithmetic and rounded once to the compute dtype. The weights are transformed once
(``U = G w G^T``, in float64) and cached by the caller. The result equals the direct
convolution up to rounding, relative to the output's magnitude: ~1e-6 for F(3x3, 4x4) with
points (0, 1, -1, 1/2, -1/2), ~2e-6 for F(5x5, 4x4) and F(6x6, 3x3) with (0, +-1, +-1/2, +-2),
measured on the PDN-S layers (tests/test_winograd.py checks 2e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from efficientad_ext.ops import arg_checks as _checks
from efficientad_ext.ops.winograd_matrices import (
    DEFAULT_TILE,
    DEFAULT_TILES,
    TILES,
    tile_set,
    transform_matrices,
    transform_tensors,
    transform_weight,
)

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_TILES",
    "TILES",
    "WinogradWeights",
    "prepare_weights",
    "tile_set",
    "transform_matrices",
]


@dataclass(frozen=True)
class WinogradWeights:
    """One convolution prepared for :func:`efficientad_ext.ops.winograd_conv2d` (transformed
    once, reused)."""

    weight_tf: Tensor  # [a*a, C_in, C_out]
    bias: Tensor | None
    input_tf: Tensor  # BT [a, a]
    output_tf: Tensor  # AT [m, a]
    kernel_size: int
    weight: Tensor  # the untransformed [C_out, C_in, r, r]: the direct path for non-finite input


@torch.no_grad()
def prepare_weights(weight: Tensor, bias: Tensor | None = None, tile: int | None = None) -> WinogradWeights:
    """Transforms a [C_out, C_in, r, r] convolution weight for F(tile x tile, r x r)
    (``tile`` defaults to :data:`DEFAULT_TILE`); the transform runs in float64 and is
    rounded once to the weight's dtype."""
    _checks.floating(weight, "weight")
    _checks.rank(weight, 4, "weight", "[C_out, C_in, r, r]")
    r = int(weight.shape[-1])
    if weight.shape[-2] != r:
        raise ValueError(f"weight must have a square kernel, got {tuple(weight.shape)}")
    m = DEFAULT_TILE.get(r) if tile is None else tile
    if m is None:
        raise ValueError(f"no Winograd tile for {r}x{r} kernels (supported: {sorted(DEFAULT_TILE)})")
    dev, dtype = weight.device, weight.dtype
    bt, at, g = transform_tensors(m, r, dtype)
    _, _, g64 = transform_tensors(m, r, torch.float64)
    weight_tf = transform_weight(weight.to(dev), g64.to(dev)).to(dtype).contiguous()
    b = None if bias is None else bias.detach().contiguous()
    return WinogradWeights(weight_tf, b, bt.to(dev), at.to(dev), r, weight.detach().contiguous())
