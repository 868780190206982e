"""Checks of a convolution layer's integer arguments, shared by ``conv2d_relu_pool`` and
``winograd_conv2d``: the kernels would otherwise raise RuntimeError (or try to allocate an
output of 2**40 rows) where a caller should get a ValueError naming the argument."""
from __future__ import annotations

from collections.abc import Sequence

# Far above any real use (a PDN pads by at most 3) and small enough that the padded size
# cannot overflow or ask for an absurd allocation.
MAX_PADDING = 1 << 16


def check_layer_args(padding: object, kernel_size: Sequence[int], pool: bool, pool_padding: object) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= MAX_PADDING:
        raise ValueError(f"padding must be an integer in [0, {MAX_PADDING}], got {padding!r}")
    if min(int(k) for k in kernel_size) < 1:
        raise ValueError(f"the kernel must be at least 1x1, got {tuple(int(k) for k in kernel_size)}")
    if pool and (isinstance(pool_padding, bool) or pool_padding not in (0, 1)):
        raise ValueError(f"pool_padding must be 0 or 1, got {pool_padding!r}")


def check_output_size(in_hw: Sequence[int], kernel_hw: Sequence[int], padding: int, pool: bool, pool_padding: int) -> None:
    """The convolution (stride 1) and, with ``pool``, the 2x2 pooling must leave at least one pixel."""
    out_h = int(in_hw[0]) + 2 * padding - int(kernel_hw[0]) + 1
    out_w = int(in_hw[1]) + 2 * padding - int(kernel_hw[1]) + 1
    if out_h <= 0 or out_w <= 0 or (pool and min(out_h, out_w) + 2 * pool_padding < 2):
        raise ValueError(
            f"input of spatial size {tuple(int(v) for v in in_hw)} is too small for a {tuple(int(k) for k in kernel_hw)} "
            f"kernel with padding {padding}" + (" followed by 2x2 pooling" if pool else "")
        )
