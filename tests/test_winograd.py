"""efficientad::winograd_conv2d (CPU) against the direct convolution (reference.winograd_conv2d).

Tolerance: Winograd computes the same function with different rounding (transforms of
float32 data in float32). Measured max |error| / max |output| is ~1e-6 to 5e-6 for the
PDN layer shapes with the small tiles (6x6 input tiles) and ~1e-6 to 3e-6 with the large
ones (8x8, points +-2 added; session 17, the PDN-S layers on their real inputs); the tests
allow 2e-5 in float32 and 1e-11 in float64 for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from efficientad_ext import reference
from efficientad_ext.inference.options import WINOGRAD_TILE_SETS
from efficientad_ext.inference.winograd import DEFAULT_TILE, TILES, prepare_weights, transform_matrices
from efficientad_ext.ops import winograd_conv2d

REL_TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


@pytest.mark.parametrize("m, r", [(2, 3), (2, 4), (3, 4), (4, 3), (5, 4), (6, 3)])
def test_transform_matrices_compute_a_correlation_exactly(m, r):
    at, g, bt = transform_matrices(m, r)
    a = m + r - 1
    d = [Fraction(v) for v in torch.randint(-9, 10, (a,)).tolist()]
    w = [Fraction(v) for v in torch.randint(-9, 10, (r,)).tolist()]
    gw = [sum(g[j][k] * w[k] for k in range(r)) for j in range(a)]
    bd = [sum(bt[j][k] * d[k] for k in range(a)) for j in range(a)]
    y = [sum(at[i][j] * gw[j] * bd[j] for j in range(a)) for i in range(m)]
    assert y == [sum(w[k] * d[i + k] for k in range(r)) for i in range(m)]


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.mark.parametrize("tiles", ["large", "small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, c_out, k, padding, relu, pool, pool_padding",
    [
        ((1, 128, 30, 30), 256, 4, 0, True, True, 0),  # PDN layer 2 (unpadded), smaller image
        ((2, 64, 17, 19), 96, 4, 3, True, True, 1),  # padded PDN layer 2: conv and pool padding
        ((1, 70, 13, 11), 130, 3, 1, True, False, 0),  # channels not multiples of the 64-block
        ((3, 40, 12, 12), 33, 4, 0, False, False, 0),  # PDN last layer: no ReLU
        ((2, 64, 10, 9), 64, 4, 2, True, False, 0),  # autoencoder decoder: padding 2, output grows
        ((1, 5, 4, 4), 7, 3, 1, False, False, 0),  # fewer output pixels than one tile
    ],
)
def test_matches_direct_convolution(tiles, dtype, shape, c_out, k, padding, relu, pool, pool_padding):
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, shape[1], k, k, dtype=dtype) / (shape[1] * k * k) ** 0.5
    bias = torch.randn(c_out, dtype=dtype)
    prepared = prepare_weights(weight, bias, tile=TILES[tiles][k])
    assert prepared.output_tf.shape == (TILES[tiles][k], TILES[tiles][k] + k - 1)
    got = winograd_conv2d(x, prepared, padding, relu, pool, pool_padding)
    expected = reference.winograd_conv2d(x.double(), weight.double(), bias.double(), padding, relu, pool, pool_padding)
    assert got.shape == expected.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(got, expected) < REL_TOL[dtype]


@pytest.mark.parametrize("tile", [2, None])
def test_reads_a_channel_slice_and_nchw_input_and_no_bias(tile):
    both = torch.randn(2, 48, 14, 15).contiguous(memory_format=torch.channels_last)
    half = both[:, 16:]  # channel slice of a channels-last tensor: read in place
    weight = torch.randn(20, 32, 4, 4) / 16
    expected = reference.winograd_conv2d(half.double(), weight.double(), None, 1, True, False, 0)
    prepared = prepare_weights(weight, None, tile=tile)
    for x in (half, half.contiguous()):
        assert _relative_error(winograd_conv2d(x, prepared, 1, True), expected) < REL_TOL[torch.float32]


def test_a_large_batch_spans_several_tile_chunks():
    # 8 MB of transformed tiles per chunk: 16 x 40x40 images of 64 -> 64 channels need several.
    x = torch.randn(16, 64, 40, 40).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 64, 3, 3) / 24
    bias = torch.randn(64)
    expected = reference.winograd_conv2d(x.double(), weight.double(), bias.double(), 1, True, False, 0)
    assert (
        _relative_error(winograd_conv2d(x, prepare_weights(weight, bias), 1, True), expected) < REL_TOL[torch.float32]
    )


def test_bad_arguments_are_named():
    weight = torch.randn(8, 4, 3, 3)
    prepared = prepare_weights(weight)
    with pytest.raises(ValueError, match="channels"):
        winograd_conv2d(torch.randn(1, 5, 8, 8), prepared)
    with pytest.raises(TypeError, match="float32 or float64"):
        winograd_conv2d(torch.randn(1, 4, 8, 8).bfloat16(), prepared)
    with pytest.raises(ValueError, match="no Winograd tile"):
        prepare_weights(torch.randn(8, 4, 5, 5))
    with pytest.raises(ValueError, match="square"):
        prepare_weights(torch.randn(8, 4, 3, 4))
    with pytest.raises(ValueError, match="too small"):
        winograd_conv2d(torch.randn(1, 4, 2, 2), prepared)
    assert DEFAULT_TILE == TILES["large"] == {3: 6, 4: 5} and TILES["small"] == {3: 4, 4: 3}
    assert tuple(TILES) == WINOGRAD_TILE_SETS  # the options validate against the same names


def test_large_tiles_are_the_default_and_use_8x8_input_tiles():
    prepared = prepare_weights(torch.randn(8, 4, 4, 4))
    assert prepared.input_tf.shape == (8, 8) and prepared.output_tf.shape == (5, 8)
    assert prepared.weight_tf.shape == (64, 4, 8)
    assert prepare_weights(torch.randn(8, 4, 3, 3)).output_tf.shape == (6, 8)


def test_a_wrong_transform_is_detected():
    # Negative control for the tolerance: the large tiles' output transform with one entry off
    # by 1/64 (a rounding far coarser than float32's) must fail the 2e-5 check.
    x = torch.randn(1, 64, 20, 20).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(32, 64, 4, 4) / 32
    prepared = prepare_weights(weight)
    broken = type(prepared)(
        prepared.weight_tf,
        prepared.bias,
        prepared.input_tf,
        prepared.output_tf + torch.nn.functional.one_hot(torch.tensor(12), 40).view(5, 8) / 64,
        4,
        prepared.weight,
    )
    expected = reference.winograd_conv2d(x.double(), weight.double(), None, 0, False, False, 0)
    assert _relative_error(winograd_conv2d(x, prepared, 0, False), expected) < REL_TOL[torch.float32]
    assert _relative_error(winograd_conv2d(x, broken, 0, False), expected) > 1e-3


def test_opcheck():
    # CPU only: the op has no CUDA kernel (CUDA inference runs cuDNN's convolutions).
    prepared = prepare_weights(torch.randn(6, 32, 3, 3), torch.randn(6))
    x = torch.randn(1, 32, 9, 10).contiguous(memory_format=torch.channels_last)
    args = (x, prepared.weight_tf, prepared.bias, prepared.input_tf, prepared.output_tf, 3, 1, True, True, 1)
    torch.library.opcheck(torch.ops.efficientad.winograd_conv2d.default, args)
    # With the untransformed weight (the finite scan and its direct fallback), finite and not.
    torch.library.opcheck(torch.ops.efficientad.winograd_conv2d.default, (*args, prepared.weight))
    x_nan = x.clone()
    x_nan[0, 5, 4, 4] = float("nan")
    # (Not its aot_dispatch check: that compares outputs with assert_close, for which NaN != NaN.)
    torch.library.opcheck(
        torch.ops.efficientad.winograd_conv2d.default,
        (x_nan, *args[1:], prepared.weight),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_torch_compile_fullgraph():
    prepared = prepare_weights(torch.randn(6, 32, 4, 4))
    x = torch.randn(1, 32, 12, 12)
    compiled = torch.compile(lambda inp: winograd_conv2d(inp, prepared, 0, True) + 0.0, fullgraph=True)
    torch.testing.assert_close(compiled(x), winograd_conv2d(x, prepared, 0, True))
    # The finite scan is inside the op: a compiled call falls back to the direct convolution too.
    x[0, 3, 5, 6] = float("inf")
    expected = reference.winograd_conv2d(x, prepared.weight, None, 0, True, False, 0)
    got = compiled(x)
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-5, atol=1e-5)


def test_untransformed_weight_must_match_the_transformed_one():
    prepared = prepare_weights(torch.randn(6, 32, 3, 3))
    x = torch.randn(1, 32, 9, 10)
    raw = torch.ops.efficientad.winograd_conv2d
    args = (x, prepared.weight_tf, None, prepared.input_tf, prepared.output_tf, 3, 1, True, False, 0)
    with pytest.raises(ValueError, match=r"weight \(the untransformed convolution\) must be \[6, 32, 3, 3\]"):
        raw(*args, torch.randn(6, 32, 4, 4))
    with pytest.raises(TypeError, match="weight must have input's dtype Float, got Double"):
        raw(*args, prepared.weight.double())


# Every copy of the loops the CPU can run (EFFICIENTAD_CPU_ISA caps the run-time choice; a cap
# above what the CPU has runs the CPU's best), each in its own process: the choice is made once.
_ISA_CHECK = """
import torch
from efficientad_ext import reference
from efficientad_ext.inference.winograd import prepare_weights
from efficientad_ext.ops import winograd_conv2d
torch.manual_seed(0)
cases = [(70, 130, 3, 1, True, False), (64, 96, 4, 3, True, True), (17, 33, 4, 0, False, False)]
for (c, k, r, pad, relu, pool), tiles in [(case, t) for case in cases for t in ({3: 6, 4: 5}, {3: 4, 4: 3})]:
    x = torch.randn(2, c, 15, 13).contiguous(memory_format=torch.channels_last)[:, 1:]  # odd channel slice
    w, b = torch.randn(k, c - 1, r, r), torch.randn(k)
    got = winograd_conv2d(x, prepare_weights(w, b, tile=tiles[r]), pad, relu, pool, 1 if pool else 0)
    ref = reference.winograd_conv2d(x.double(), w.double(), b.double(), pad, relu, pool, 1 if pool else 0)
    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < 2e-5, (c, k, r, tiles, err)
    x[1, 7, 3, 4] = float("nan")
    got = winograd_conv2d(x, prepare_weights(w, b, tile=tiles[r]), pad, relu, pool, 1 if pool else 0)
    ref = reference.winograd_conv2d(x, w, b, pad, relu, pool, 1 if pool else 0)
    assert torch.equal(got.isnan(), ref.isnan()), (c, k, r)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_copy_matches_direct_convolution(isa):
    env = {**os.environ, "EFFICIENTAD_CPU_ISA": isa}
    done = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_unknown_instruction_set_cap_is_a_clear_error():
    env = {**os.environ, "EFFICIENTAD_CPU_ISA": "avx1024"}
    done = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "EFFICIENTAD_CPU_ISA must be avx512, avx2 or baseline, got 'avx1024'" in done.stderr
