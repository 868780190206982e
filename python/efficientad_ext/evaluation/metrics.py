"""Anomaly detection metrics, exact (no threshold sampling, no binning), numpy and scipy.

- :func:`auroc` / :func:`image_auroc` / :func:`pixel_auroc`: area under the ROC curve as the
  Mann-Whitney statistic with mid-ranks (ties count one half), i.e. the trapezoidal area of
  the ROC curve through every distinct score, as ``sklearn.metrics.roc_auc_score``.
- :func:`au_pro`: normalised area under the per-region-overlap curve up to a false positive
  rate limit, the MVTec AD definition (Bergmann et al., IJCV 2021; ``compute_pro`` of the
  official evaluation code), with exact FPRs and interpolation at the limit.
- :func:`connected_components`: 8-connected labelling of binary masks, each image on its own
  (``scipy.ndimage.label``), used by :func:`au_pro`.

Inputs may be numpy arrays or torch tensors (any device; copied to host memory). Scores
must not contain NaN (a ``ValueError`` says so); infinities are fine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["au_pro", "auroc", "connected_components", "image_auroc", "pixel_auroc"]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise TypeError(f"{name} must be a numeric array or tensor, got an object array")
    return a


def _scores(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _binary(x: Any, name: str, zero_one: bool) -> np.ndarray:
    """A bool array: bool as is; numbers as ``!= 0`` (``zero_one``: only 0 and 1 allowed)."""
    a = _to_numpy(x, name)
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        expected = "bool or 0/1 numbers" if zero_one else "bool or numeric (nonzero = anomalous)"
        raise TypeError(f"{name} must be {expected}, got dtype {a.dtype}")
    b = a != 0
    if zero_one and (not (b | (a == 0)).all() or not (a[b] == 1).all()):
        raise ValueError(f"{name} must contain only 0 and 1, got values {np.unique(a)[:10].tolist()}")
    return b


def _labels(x: Any, name: str) -> np.ndarray:
    return _binary(x, name, zero_one=True)


def _masks(x: Any, name: str) -> np.ndarray:
    return _binary(x, name, zero_one=False)


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), exactly, by sorting (O((m + n) log(m + n)))."""
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)  # sorted queries keep searchsorted cache friendly
    below = np.searchsorted(neg_sorted, pos_sorted, side="left").sum(dtype=np.int64)
    below_or_equal = np.searchsorted(neg_sorted, pos_sorted, side="right").sum(dtype=np.int64)
    # 2U = sum(below + below_or_equal): an exact integer; one rounding in the division.
    return float((int(below) + int(below_or_equal)) / (2.0 * pos.size * neg.size))


def auroc(scores: Any, labels: Any) -> float:
    """Exact area under the ROC curve of ``scores`` (higher = more anomalous) against binary
    ``labels`` (1/True = anomalous): the Mann-Whitney U statistic with mid-ranks for ties,
    divided by ``n_pos * n_neg``. Arrays of any shape, flattened; shapes must match.

    Raises:
        ValueError: shape mismatch, NaN scores, labels other than 0/1, or only one class.
    """
    s = _scores(scores, "scores")
    y = _labels(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got {s.shape} and {y.shape}")
    s = s.reshape(-1)
    y = y.reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        present = "no samples" if y.size == 0 else f"only {'anomalous' if n_pos else 'normal'} samples"
        raise ValueError(f"AUROC needs both normal and anomalous samples, got {present}")
    return _mann_whitney_auc(s[y], s[~y])


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC: ``scores`` and ``labels`` are 1-D, one value per image."""
    s = _to_numpy(scores, "scores")
    y = _to_numpy(labels, "labels")
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D (one per image), got shapes {s.shape} and {y.shape}")
    return auroc(s, y)


def _as_nhw(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be [N, H, W] (or [H, W], [N, 1, H, W]), got shape {a.shape}")
    return a


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``[N, H, W]`` score maps and bool masks of one shape."""
    a = _as_nhw(_scores(maps, "maps"), "maps")
    m = _as_nhw(_masks(masks, "masks"), "masks")
    if a.shape != m.shape:
        raise ValueError(f"maps and masks must have the same shape, got {a.shape} and {m.shape}")
    return a, m


def _fpr_limit(value: float) -> float:
    limit = float(value)
    if not (0.0 < limit <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {value}")
    return limit


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over all pixels of all images: ``maps`` ``[N, H, W]`` anomaly maps
    against ``masks`` ``[N, H, W]`` (nonzero / True = anomalous pixel). Maps and masks must
    already have the same size (resize the maps to the masks' size first)."""
    a, m = _maps_and_masks(maps, masks)
    n_pos = int(m.sum())
    if n_pos == 0 or n_pos == m.size:
        raise ValueError(
            "pixel AUROC needs both normal and anomalous pixels, got "
            + ("no pixels" if m.size == 0 else f"only {'anomalous' if n_pos else 'normal'} pixels")
        )
    return _mann_whitney_auc(a[m], a[~m])


def _stack_labels(m: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of the True pixels of ``m`` [N, H, W], never across images:
    labels 1..k over the whole stack in raster order of each component's first pixel."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # the 3x3 neighbourhood within one image only
    labels, count = ndimage.label(m, structure=structure)
    return labels, int(count)


def connected_components(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected components of binary masks ``[N, H, W]`` (or one ``[H, W]``),
    each image separately, as ``scipy.ndimage.label(mask, np.ones((3, 3)))`` does: labels
    ``1..k`` numbered in raster order of each component's first pixel, 0 for background.

    Returns ``(labels, counts)``: int32 labels of the input's shape and the number of
    components of each image (int64 ``[N]``, or a 0-d array for one ``[H, W]`` mask).
    """
    raw = _masks(masks, "masks")
    single = raw.ndim == 2
    m = _as_nhw(raw, "masks")
    labels, _ = _stack_labels(m)
    # Stack labels are consecutive image after image: subtract each image's first label - 1.
    per_image_max = labels.reshape(m.shape[0], -1).max(axis=1, initial=0) if m.size else np.zeros(m.shape[0], np.int64)
    counts = np.diff(np.maximum.accumulate(np.concatenate([[0], per_image_max]))).astype(np.int64)
    offsets = (np.cumsum(counts) - counts).astype(labels.dtype)
    labels = np.where(labels > 0, labels - offsets[:, None, None], 0).astype(np.int32)
    if single:
        return labels[0], counts[0]
    return labels.reshape(raw.shape), counts


def _pro_area(pos: np.ndarray, w: np.ndarray, neg: np.ndarray, limit: float, n_regions: int) -> float:
    """The PRO curve's area from FPR 0 to ``limit`` (not yet divided by it). ``pos``: the
    anomalous pixels' scores, ``w``: 1 / their region's size; ``neg``: the normal pixels'
    scores (a copy; partitioned in place)."""
    n_normal = neg.size
    # The curve, in descending threshold order, has one edge per distinct score v:
    # (F(> v), P(> v)) -> (F(>= v), P(>= v)). Edges of values no normal pixel has are
    # vertical and add no area, so the area is a sum over the normal pixels i above the
    # limit of (1 / n_normal) * (P(> v_i) + P(>= v_i)) / 2, plus the part of the edge that
    # crosses fpr_limit. Swapping the sums, each anomalous pixel j (weight 1 / region size)
    # adds w_j * (#{i: v_i < s_j} + #{i: v_i == s_j} / 2): one sorted search per anomalous
    # pixel, and only the top ~fpr_limit of the normal pixels need sorting.
    q = int(np.floor(limit * n_normal))  # descending position of the normal pixel at the limit
    if q < n_normal:
        kth = n_normal - 1 - q
        neg.partition(kth)  # in place: neg is a copy
        v_k = neg[kth]  # the crossing edge's value
        above = neg[kth + 1 :]
        above = np.sort(above[above > v_k])
        n_above = above.size  # normal pixels > v_k
        n_at_or_above = n_above + int(np.count_nonzero(neg == v_k))
        # anomalous pixels <= v_k have no normal pixel of the full edges below them
        hit = pos > v_k
        pos_hit, w_hit = pos[hit], w[hit]
    else:  # fpr_limit == 1: every edge is whole
        above = np.sort(neg)
        n_above = n_at_or_above = n_normal
        pos_hit, w_hit = pos, w
    order = np.argsort(pos_hit)  # sorted queries make the searches cache friendly
    pos_hit, w_hit = pos_hit[order], w_hit[order]
    below = np.searchsorted(above, pos_hit, side="left")
    below_or_equal = np.searchsorted(above, pos_hit, side="right")
    area = float(np.dot(w_hit, (below + below_or_equal).astype(np.float64))) / (2.0 * n_normal * n_regions)
    if n_above < n_at_or_above:  # the edge crossing the limit, interpolated linearly
        f0, f1 = n_above / n_normal, n_at_or_above / n_normal
        p0 = min(float(w[pos > v_k].sum()) / n_regions, 1.0)
        p1 = min(float(w[pos >= v_k].sum()) / n_regions, 1.0)
        width = limit - f0
        if width > 0:
            y = p0 + (p1 - p0) * width / (f1 - f0)
            area += 0.5 * (p0 + y) * width
    return area


def au_pro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO).

    For a threshold t: FPR(t) is the fraction of all normal pixels (mask False, over all
    images) with score >= t; PRO(t) is the mean, over all 8-connected components of all
    ground-truth masks, of the fraction of the component's pixels with score >= t. The curve
    runs through (0, 0), the point of every distinct score value (sorted) and (1, 1); its
    trapezoidal area from FPR 0 to ``fpr_limit`` (linearly interpolated at the limit) is
    divided by ``fpr_limit``, so the result lies in [0, 1] (1: every region fully detected
    before any false positive).

    ``maps`` and ``masks`` are ``[N, H, W]`` (or ``[H, W]`` / ``[N, 1, H, W]``) of one shape.
    Masks without anomalous pixels add no components but their pixels count as normal.

    Raises:
        ValueError: no components in any mask, no normal pixels, NaN, bad shapes or limit.
    """
    limit = _fpr_limit(fpr_limit)
    a, m = _maps_and_masks(maps, masks)
    labels, n_regions = _stack_labels(m)
    flat_labels = labels.reshape(-1)
    fg = np.flatnonzero(flat_labels)
    sizes = np.bincount(flat_labels[fg], minlength=n_regions + 1)
    if n_regions == 0:
        raise ValueError("AU-PRO needs at least one anomalous region, but all masks are empty")
    n_normal = m.size - fg.size
    if n_normal == 0:
        raise ValueError("AU-PRO needs normal pixels (mask False), but every pixel is anomalous")

    flat = a.reshape(-1)
    pos = flat[fg]
    w = 1.0 / sizes[flat_labels[fg]]
    neg = flat[~m.reshape(-1)]
    return float(min(max(_pro_area(pos, w, neg, limit, n_regions) / limit, 0.0), 1.0))
