"""AUROC and AU-PRO: hand-computed cases, sklearn / scipy cross-checks, a brute-force AU-PRO."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from efficientad_ext.evaluation.metrics import au_pro, auroc, connected_components, image_auroc, pixel_auroc

try:
    from sklearn.metrics import roc_auc_score
except ImportError:  # pragma: no cover
    roc_auc_score = None
needs_sklearn = pytest.mark.skipif(roc_auc_score is None, reason="scikit-learn not installed")


# ---------------------------------------------------------------------------------------------
# AUROC


def test_auroc_hand_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sklearn's docstring example
    # pos {1, 2} vs neg {1, 0}: pairs 0.5 + 1 + 1 + 1
    assert auroc([1, 2, 1, 0], [1, 1, 0, 0]) == 3.5 / 4
    assert auroc(np.array([3, 1, 2]), np.array([True, False, True])) == 1.0
    assert image_auroc(torch.tensor([0.2, 0.1, 0.3]), torch.tensor([0, 0, 1])) == 1.0


def test_auroc_inputs():
    s = torch.rand(50)
    y = torch.arange(50) % 2
    expected = auroc(s.numpy(), y.numpy())
    assert auroc(s, y) == expected
    assert auroc(s.double().numpy(), y.bool().numpy()) == expected
    assert auroc(s.to(torch.bfloat16), y) == auroc(s.to(torch.bfloat16).float(), y)
    assert auroc([-np.inf, np.inf], [0, 1]) == 1.0


def test_auroc_errors():
    with pytest.raises(ValueError, match="only normal"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="only anomalous"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="same shape"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="only normal pixels"):
        pixel_auroc(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))


@needs_sklearn
@pytest.mark.parametrize("n,levels", [(7, None), (100, None), (100, 5), (5000, 50), (20000, None)])
def test_auroc_matches_sklearn(n, levels):
    rng = np.random.default_rng(n)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = rng.normal(size=n) + 0.7 * y
    if levels is not None:
        s = np.round(s * levels / 4) / levels  # many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(s.astype(np.float32), y) == pytest.approx(roc_auc_score(y, s.astype(np.float32)), abs=1e-12)


@needs_sklearn
def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 40), bool)
    masks[1:4, 5:15, 10:30] = True
    masks[5, 0, 0] = True
    maps = rng.random(masks.shape, dtype=np.float32) + 0.3 * masks
    maps = np.round(maps, 2)  # ties
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(
        torch.from_numpy(maps)[:, None], torch.from_numpy(masks.astype(np.uint8) * 255)[:, None]
    ) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# connected components


def bfs_labels(mask: np.ndarray) -> np.ndarray:
    """8-connected labelling in raster order of first pixel, by breadth-first search."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    n = 0
    for y0 in range(h):
        for x0 in range(w):
            if mask[y0, x0] and not labels[y0, x0]:
                n += 1
                labels[y0, x0] = n
                queue = deque([(y0, x0)])
                while queue:
                    y, x = queue.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = y + dy, x + dx
                            if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                                labels[yy, xx] = n
                                queue.append((yy, xx))
    return labels


def test_connected_components_hand():
    m = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]], bool)
    labels, n = connected_components(m)
    assert n == 4
    # the diagonal pair (0, 0)-(1, 1) is one component; numbered in raster order
    np.testing.assert_array_equal(labels, [[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [3, 3, 0, 4]])
    np.testing.assert_array_equal(labels, bfs_labels(m))
    # a row's last pixel and the next row's first pixel are not neighbours, nor are images
    wrap = np.zeros((2, 3, 3), bool)
    wrap[0, 0, 2] = wrap[0, 1, 0] = True
    wrap[0, 2, 2] = wrap[1, 0, 2] = True
    labels, counts = connected_components(wrap)
    assert counts.tolist() == [3, 1]


def test_connected_components_random_against_bfs():
    rng = np.random.default_rng(3)
    masks = rng.random((8, 23, 31)) < np.linspace(0.05, 0.7, 8)[:, None, None]
    labels, counts = connected_components(masks)
    for i in range(8):
        expected = bfs_labels(masks[i])
        np.testing.assert_array_equal(labels[i], expected)
        assert counts[i] == expected.max()


def test_connected_components_against_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    masks = rng.random((20, 64, 64)) < 0.45
    labels, counts = connected_components(masks)
    for i in range(20):
        expected, n = ndimage.label(masks[i], np.ones((3, 3)))
        np.testing.assert_array_equal(labels[i], expected)
        assert counts[i] == n


# ---------------------------------------------------------------------------------------------
# AU-PRO


def brute_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Every threshold one by one, PRO from BFS components, then the official code's
    trapezoid_area with interpolation at the limit."""
    region_masks = []
    for i, m in enumerate(masks):
        lab = bfs_labels(m)
        region_masks += [(i, lab == k) for k in range(1, lab.max() + 1)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float(np.mean(normal >= t)))
        pros.append(float(np.mean([np.mean(maps[i][r] >= t) for i, r in region_masks])))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    correction = 0.0
    if limit not in x:
        ins = int(np.searchsorted(x, limit, side="left"))
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (limit - x[ins - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return (float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1]))) + correction) / limit


def hand_case():
    # image 0: region {0.9, 0.5} (2 pixels), normal {0.6, 0.2}
    # image 1: region {0.7} (1 pixel), normal {0.5, 0.3, 0.1}
    maps = np.array([[[0.9, 0.5], [0.6, 0.2]], [[0.5, 0.3], [0.1, 0.7]]])
    masks = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 1]]], bool)
    return maps, masks


@pytest.mark.parametrize(
    "limit,expected",
    [
        # curve: (0,0) (0,.25) (0,.75) (.2,.75) (.4,1) (.6,1) (.8,1) (1,1)
        (0.2, 0.15 / 0.2),
        (0.3, (0.15 + 0.1 * (0.75 + 0.875) / 2) / 0.3),  # interpolated at 0.3: PRO 0.875
        (0.4, (0.15 + 0.2 * (0.75 + 1.0) / 2) / 0.4),
        (1.0, 0.15 + 0.175 + 0.6),
    ],
)
def test_au_pro_hand(limit, expected):
    maps, masks = hand_case()
    assert au_pro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)
    assert brute_au_pro(maps, masks, limit) == pytest.approx(expected, abs=1e-12)


def test_au_pro_extremes():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:5, 2:5] = masks[1, 7:, 7:] = True
    perfect = masks.astype(np.float64) + 0.1 * np.random.default_rng(0).random(masks.shape)
    assert au_pro(perfect, masks) == 1.0
    assert au_pro(-perfect, masks) == 0.0
    # one threshold: the curve is the diagonal (0, 0) -> (1, 1): area 0.3^2 / 2, / 0.3
    assert au_pro(np.zeros(masks.shape), masks) == pytest.approx(0.15, abs=1e-12)
    # the empty third mask adds normal pixels: with its map above everything, the first 100
    # of the 282 normal pixels (FPR 0.35 > 0.3) come before any region pixel
    maps = perfect.copy()
    maps[2] = 5.0
    assert au_pro(maps, masks) == 0.0
    assert au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(1 - 100 / 282, abs=1e-12)


def test_au_pro_errors():
    maps, masks = hand_case()
    with pytest.raises(ValueError, match="all masks are empty"):
        au_pro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="fpr_limit"):
        au_pro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="fpr_limit"):
        au_pro(maps, masks, fpr_limit=1.5)
    with pytest.raises(ValueError, match="same shape"):
        au_pro(maps[:1], masks)
    with pytest.raises(ValueError, match="NaN"):
        au_pro(np.where(masks, np.nan, maps), masks)
    with pytest.raises(ValueError, match="every pixel is anomalous"):
        au_pro(maps, np.ones_like(masks))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.05, 0.3, 0.77, 1.0])
def test_au_pro_against_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    n, h, w = 4, 9, 11
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 1):  # the last image stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 5)] = True
    maps = rng.random((n, h, w)) + 0.4 * masks
    if seed % 2:
        maps = np.round(maps * 8) / 8  # heavy ties, between normal and anomalous pixels too
    got = au_pro(maps, masks, fpr_limit=limit)
    assert got == pytest.approx(brute_au_pro(maps, masks, limit), abs=1e-10)
    assert au_pro(torch.from_numpy(maps).float(), torch.from_numpy(masks), limit) == pytest.approx(
        brute_au_pro(maps.astype(np.float32), masks, limit), abs=1e-6
    )


def test_au_pro_on_a_large_set_agrees_with_the_sampled_curve():
    """100 maps of 256x256 (the size of a real test set's): the exact AU-PRO against the
    area under the PRO curve sampled at 301 false-positive rates (curves.py, another path)."""
    from efficientad_ext.evaluation.curves import pro_curve

    rng = np.random.default_rng(0)
    masks = np.zeros((100, 256, 256), bool)
    yy, xx = np.mgrid[:256, :256]
    for i in range(60):
        cy, cx, r = rng.integers(20, 236, 2).tolist() + [int(rng.integers(3, 30))]
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps = rng.random(masks.shape, dtype=np.float32) + 0.2 * masks
    value = au_pro(maps, masks)
    pixel = pixel_auroc(maps, masks)
    assert 0 < value < 1 and 0.5 < pixel < 1
    fpr, pro = pro_curve(maps, masks, fpr_limit=0.3, points=301)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(value, abs=2e-3)
