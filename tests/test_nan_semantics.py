"""NaN and infinity at the edges of the ops' definitions (README, "Operators")."""

from __future__ import annotations

import torch

from efficientad_ext import ops, reference


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
