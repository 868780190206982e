"""The curves behind the metrics, as points to plot (the report's ROC and PRO figures).

- :func:`roc_curve`: the exact image-level ROC curve through every distinct score; its
  trapezoidal area is :func:`~efficientad_ext.evaluation.metrics.auroc` (ties are diagonal
  edges, i.e. count one half).
- :func:`pixel_roc_curve`: the pixel-level ROC curve at ``bins`` equally spaced thresholds
  (tens of millions of pixels: binned for drawing; the reported pixel AUROC stays exact).
- :func:`pro_curve`: the per-region-overlap curve at thresholds chosen so that the false
  positive rate steps evenly from 0 to ``fpr_limit`` (the part AU-PRO integrates).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from efficientad_ext.evaluation.metrics import _fpr_limit, _labels, _maps_and_masks, _scores, _stack_labels

__all__ = ["pixel_roc_curve", "pro_curve", "roc_curve"]


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), float64, from (0, 0) to (1, 1): one point after each distinct score, in
    descending score order (a score is flagged when ``>=`` the threshold)."""
    s = _scores(scores, "scores").reshape(-1).astype(np.float64)
    y = _labels(labels, "labels").reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.size} and {y.size}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("an ROC curve needs both normal and anomalous samples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # ties end together
    tp = np.cumsum(y)[last_of_value]
    fp = (last_of_value + 1) - tp
    return np.r_[0.0, fp / (y.size - n_pos)], np.r_[0.0, tp / n_pos]


def pixel_roc_curve(maps: Any, masks: Any, bins: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of all pixels of ``maps`` [N, H, W] against ``masks`` at ``bins`` + 1
    thresholds equally spaced over the maps' range (both axes from 1 down to 0)."""
    a, m = _maps_and_masks(maps, masks)
    a = a.astype(np.float64)
    n_pos = int(m.sum())
    if n_pos == 0 or n_pos == m.size:
        raise ValueError("a pixel ROC curve needs both normal and anomalous pixels")
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    clipped = np.clip(a, edges[0], edges[-1])  # +-inf fall into the end bins
    pos_hist, _ = np.histogram(clipped[m], bins=edges)
    neg_hist, _ = np.histogram(clipped[~m], bins=edges)
    # Pixels at or above edge k: the sum of the bins from k on (descending thresholds).
    tp = np.r_[np.cumsum(pos_hist[::-1])[::-1], 0]
    fp = np.r_[np.cumsum(neg_hist[::-1])[::-1], 0]
    return (fp / (m.size - n_pos))[::-1], (tp / n_pos)[::-1]


def pro_curve(maps: Any, masks: Any, fpr_limit: float = 0.3, points: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at ``points`` thresholds: the normal-pixel values at false positive rates
    ``linspace(0, fpr_limit, points)``; PRO is the mean over all 8-connected mask regions of
    the share of the region's pixels ``>=`` the threshold (as in AU-PRO). Starts at (0, 0)."""
    limit = _fpr_limit(fpr_limit)
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    a, m = _maps_and_masks(maps, masks)
    labels, n_regions = _stack_labels(m)
    if n_regions == 0:
        raise ValueError("a PRO curve needs at least one anomalous region, but all masks are empty")
    flat_labels = labels.reshape(-1)
    fg = np.flatnonzero(flat_labels)
    region_of_pixel = flat_labels[fg]
    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1)[1:].astype(np.float64)
    flat = a.reshape(-1)
    pos = flat[fg]
    neg = flat[~m.reshape(-1)]
    if neg.size == 0:
        raise ValueError("a PRO curve needs normal pixels (mask False), but every pixel is anomalous")
    # Only the top fpr_limit share of the normal pixels sets thresholds: sort just those.
    count = min(neg.size, int(np.ceil(limit * neg.size)) + 1)
    top = -np.sort(-np.partition(neg, neg.size - count)[neg.size - count :])  # descending
    ascending = top[::-1]
    fpr, pro = [0.0], [0.0]
    for f in np.linspace(0.0, limit, points)[1:]:
        t = top[min(int(np.floor(f * neg.size)), count - 1)]
        hit = np.bincount(region_of_pixel, weights=(pos >= t).astype(np.float64), minlength=n_regions + 1)[1:]
        # Ties of the smallest kept value may go on below the cut: count those over all.
        at_or_above = (
            count - int(np.searchsorted(ascending, t, side="left")) if t > top[-1] else int(np.count_nonzero(neg >= t))
        )
        fpr.append(at_or_above / neg.size)
        pro.append(float(np.mean(hit / sizes)))
    return np.asarray(fpr), np.asarray(pro)
