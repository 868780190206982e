"""The exact transform matrices of Winograd's minimal filtering F(m, r) and the tile sets the
CPU ops use (:data:`TILES`), shared by inference (:mod:`efficientad_ext.inference.winograd`
prepares weights once) and training (:mod:`efficientad_ext.ops.winograd_conv2d_trainable`
transforms them every step). See :mod:`efficientad_ext.inference.winograd` for the algorithm,
the tile sets' measured speed and their rounding error.

The matrices come from the Toom-Cook construction on ``a - 1`` finite interpolation points plus
the point at infinity, computed in exact rational arithmetic (rounded once by the caller).
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import torch
from torch import Tensor

# Interpolation points per (m, r): small magnitudes keep the transforms well conditioned.
_POINTS: dict[tuple[int, int], tuple[Fraction, ...]] = {
    (2, 3): (Fraction(0), Fraction(1), Fraction(-1)),
    (2, 4): (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2)),
    (3, 4): (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2)),
    (4, 3): (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2)),
    # a = 8: two more points, +-2 (the best-conditioned choice after +-1 and +-1/2).
    (5, 4): (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2)),
    (6, 3): (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2)),
}
# Output tile per kernel size, per tile set (their speed and error: efficientad_ext.inference.winograd).
TILES: dict[str, dict[int, int]] = {"large": {3: 6, 4: 5}, "small": {3: 4, 4: 3}}
DEFAULT_TILES = "large"
DEFAULT_TILE = TILES[DEFAULT_TILES]


def tile_set(name: str) -> dict[int, int]:
    """The output tile per kernel size of the tile set ``name`` (a key of :data:`TILES`)."""
    if name not in TILES:
        raise ValueError(f"tiles must be one of {sorted(TILES)}, got {name!r}")
    return TILES[name]


def _solve_exact(rows: list[list[Fraction]], rhs: list[Fraction], n: int) -> list[Fraction]:
    """Least-squares-free exact solve of a consistent overdetermined system (Gauss-Jordan)."""
    aug = [row[:] + [b] for row, b in zip(rows, rhs)]
    pivots: list[int] = []
    r = 0
    for col in range(n):
        piv = next((i for i in range(r, len(aug)) if aug[i][col] != 0), None)
        if piv is None:
            continue
        aug[r], aug[piv] = aug[piv], aug[r]
        inv = 1 / aug[r][col]
        aug[r] = [v * inv for v in aug[r]]
        for i in range(len(aug)):
            if i != r and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [vi - f * vr for vi, vr in zip(aug[i], aug[r])]
        pivots.append(col)
        r += 1
    if any(all(v == 0 for v in row[:n]) and row[n] != 0 for row in aug):
        raise ArithmeticError("inconsistent Winograd system")
    x = [Fraction(0)] * n
    for i, col in enumerate(pivots):
        x[col] = aug[i][n]
    return x


@cache
def transform_matrices(m: int, r: int) -> tuple[tuple[tuple[Fraction, ...], ...], ...]:
    """Exact ``(AT [m, a], G [a, r], BT [a, a])`` of F(m, r), so that for 1-D signals
    ``AT @ ((G @ g) * (BT @ d)) == correlate(d, g)`` (valid, length m)."""
    if (m, r) not in _POINTS:
        raise ValueError(f"no interpolation points for F({m}, {r}); known: {sorted(_POINTS)}")
    pts = _POINTS[(m, r)]
    a = m + r - 1
    n = a - 1
    at = [[Fraction(0)] * a for _ in range(m)]
    g = [[Fraction(0)] * r for _ in range(a)]
    for i in range(m):
        for j in range(n):
            at[i][j] = pts[j] ** i
    at[m - 1][n] = Fraction(1)
    for j in range(n):
        f = Fraction(1)
        for k in range(n):
            if k != j:
                f *= pts[j] - pts[k]
        for k in range(r):
            g[j][k] = pts[j] ** k / f
    g[n][r - 1] = Fraction(1)
    # BT solves sum_j AT[i][j] G[j][k] BT[j][l] = [l == i + k] for every (i, k, l).
    system = [[at[i][j] * g[j][k] for j in range(a)] for i in range(m) for k in range(r)]
    bt_cols = []
    for col in range(a):
        rhs = [Fraction(1 if col == i + k else 0) for i in range(m) for k in range(r)]
        bt_cols.append(_solve_exact(system, rhs, a))
    bt = [[bt_cols[col][row] for col in range(a)] for row in range(a)]
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


@cache
def transform_tensors(m: int, r: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(BT [a, a], AT [m, a], G [a, r])`` of F(m, r) as CPU tensors, rounded once to ``dtype``
    (cached: callers move them, never write them)."""
    at, g, bt = transform_matrices(m, r)
    as_tensor = lambda rows: torch.tensor([[float(v) for v in row] for row in rows], dtype=dtype)  # noqa: E731
    return as_tensor(bt), as_tensor(at), as_tensor(g)


def transform_weight(weight: Tensor, g: Tensor, flipped: bool = False) -> Tensor:
    """U = G w G^T of a [C_out, C_in, r, r] weight as [a*a, C_in, C_out], computed in ``g``'s
    dtype: one GEMM, kron(G, G) [a*a, r*r] times the weight as [r*r, C_in * C_out], which writes
    U in the layout the ops read (no permuted copy of U, 4-7x the weight's size). ``flipped``:
    the transform of ``weight.flip(2, 3).transpose(0, 1)`` (a convolution's input gradient),
    without copying the weight: flipping the kernel is flipping G's columns, swapping the
    channels is the weight's permutation."""
    c_out, c_in, r, _ = weight.shape
    g = g.flip(1) if flipped else g
    w = weight.detach().to(g.dtype).reshape(c_out, c_in, r * r)
    w = w.permute(2, 0, 1) if flipped else w.permute(2, 1, 0)  # [r*r, C_in', C_out']
    u = torch.kron(g, g) @ w.reshape(r * r, -1)
    return u.view(g.shape[0] ** 2, *w.shape[1:])
