"""NaN and infinity at the edges of the ops' definitions (README, "Operators")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from efficientad_ext import ops, reference
from efficientad_ext.inference.winograd import prepare_weights


def test_one_nan_feature_pixel_stays_one_pixel_at_equal_sizes():
    # Output size == padded map size: every bilinear weight of the second tap is exactly 0.
    # A NaN must not leak into the neighbour through 0 * NaN (the reference copies that case).
    c, h, w, pad = 3, 6, 7, 4
    teacher, autoencoder = torch.zeros(1, c, h, w), torch.zeros(1, c, h, w)
    student = torch.zeros(1, 2 * c, h, w)
    teacher[0, 1, 2, 3] = float("nan")
    mean, std, q = torch.zeros(c), torch.ones(c), torch.tensor([0.0, 1.0, 0.0, 1.0])
    for size in [(h + 2 * pad, w + 2 * pad), (h + 2 * pad, 3 * (w + 2 * pad)), (2 * (h + 2 * pad), w + 2 * pad)]:
        ours = ops.anomaly_maps(teacher, mean, std, student, autoencoder, q, size, pad).anomaly_map
        ref, _ = reference.anomaly_maps(teacher, mean, std, student, autoencoder, q, size, pad)
        assert torch.equal(ours.isnan(), ref.isnan()), size
        torch.testing.assert_close(ours, ref, equal_nan=True)
    ours = ops.anomaly_maps(teacher, mean, std, student, autoencoder, q, (h + 2 * pad, w + 2 * pad), pad).anomaly_map
    assert int(ours.isnan().sum()) == 1


def test_quantile_next_to_infinity_is_the_order_statistic():
    # Documented difference: torch.quantile's lerp gives inf - inf = NaN for q = 1 over data
    # holding +inf; the exact order statistic is +inf, and that is what we return.
    x = torch.tensor([1.0, 2.0, float("inf")])
    assert torch.quantile(x, 1.0).isnan()
    assert ops.quantile(x, 1.0) == float("inf")
    assert ops.quantile(x, 0.5) == 2.0 and ops.quantile(torch.tensor([1.0, float("nan")]), 0.5).isnan()


def test_an_infinite_feature_gives_what_the_reference_gives():
    c, h, w, pad = 3, 6, 7, 4
    gen = torch.Generator().manual_seed(0)
    teacher, autoencoder = torch.rand(1, c, h, w, generator=gen), torch.rand(1, c, h, w, generator=gen)
    student = torch.rand(1, 2 * c, h, w, generator=gen)
    teacher[0, 1, 2, 3] = float("inf")
    mean, std, q = torch.zeros(c), torch.ones(c), torch.tensor([0.0, 1.0, 0.0, 1.0])
    for size in [(h + 2 * pad, w + 2 * pad), (40, 50), (31, 17)]:
        ours = ops.anomaly_maps(teacher, mean, std, student, autoencoder, q, size, pad)
        ref, ref_score = reference.anomaly_maps(teacher, mean, std, student, autoencoder, q, size, pad)
        assert torch.equal(ours.anomaly_map.isnan(), ref.isnan()) and torch.equal(ours.anomaly_map.isinf(), ref.isinf())
        torch.testing.assert_close(ours.score, ref_score, equal_nan=True)


def test_quantiles_that_cannot_normalise_are_refused():
    # q_a == q_b divides by zero: normalising before resizing (the kernel's order) would give
    # 0 * inf = NaN where the definition gives -inf, so such quantiles are refused by name.
    c, h, w = 3, 6, 7
    t, a, s = torch.rand(1, c, h, w), torch.rand(1, c, h, w), torch.rand(1, 2 * c, h, w)
    mean, std = torch.zeros(c), torch.ones(c)
    for q in ([0.5, 0.5, 0.0, 1.0], [0.0, 1.0, 0.7, 0.2], [0.0, float("inf"), 0.0, 1.0], [float("nan"), 1.0, 0, 1]):
        with pytest.raises(ValueError, match=r"quantiles must be finite with q_st_a < q_st_b"):
            ops.anomaly_maps(t, mean, std, s, a, torch.tensor(q), (20, 20), 0)


def _tiles_of(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Every output of the m x m tiles that hold a True of ``mask`` [B, C, H, W]."""
    h, w = mask.shape[-2:]
    tiles = F.max_pool2d(mask.float(), m, m, ceil_mode=True)
    return tiles.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)[..., :h, :w].bool()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_winograd_gives_the_direct_convolutions_non_finite_outputs(value):
    x = torch.randn(1, 8, 15, 14).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(6, 8, 4, 4) / 8, torch.randn(6)
    x[0, 3, 7, 6] = value
    prepared = prepare_weights(weight, bias)
    got = ops.winograd_conv2d(x, prepared, 1, relu=False)
    expected = reference.winograd_conv2d(x, weight, bias, 1, False, False, 0)
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
    assert int((~expected.isfinite()).sum()) == 6 * 16  # one 4x4 window per output channel
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-5, atol=1e-5)
    # The raw op given the untransformed weight falls back to the direct convolution itself.
    args = (x, prepared.weight_tf, prepared.bias, prepared.input_tf, prepared.output_tf, 4, 1, False, False, 0)
    fallback = torch.ops.efficientad.winograd_conv2d(*args, prepared.weight)
    assert fallback.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fallback, expected.contiguous(memory_format=torch.channels_last), equal_nan=True)
    # Without it the op has only the transformed weights: it spreads to the whole output tiles, no further.
    raw = torch.ops.efficientad.winograd_conv2d(*args)
    bad, raw_bad = ~expected.isfinite(), ~raw.isfinite()
    assert bool((raw_bad | ~bad).all()) and bool((~raw_bad | _tiles_of(bad, prepared.output_tf.shape[0])).all())
