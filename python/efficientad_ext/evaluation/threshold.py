"""From image scores to a yes/no decision: the threshold a model stores, and how it is chosen.

Two ways, recorded with the threshold (``DecisionThreshold.method``):

- ``normal_holdout_fpr`` (at training, the default): the ``1 - target_fpr`` quantile (linear
  interpolation) of the scores of the held-out *normal* training images, so that about
  ``target_fpr`` of normal images are flagged. The default target is 1%: a factory line looks at
  every flagged part, and a false alarm per hundred good parts is a usual budget. With fewer
  than ``1 / target_fpr`` hold-out images the quantile lies between their largest scores, so
  the realised rate is coarser than the target (the record keeps the image count). These are
  the images the map quantiles come from, so their scores run slightly low and new normal
  images are flagged somewhat more often than the target; calibrating on a labelled set fixes
  that.
- ``f1_labelled`` (``efficientad calibrate``): on a labelled set, the threshold with the highest
  F1 (anomalous = positive), the midpoint between the two scores it separates.

A score above the threshold is anomalous; a NaN score (broken input) is anomalous too, never
silently normal (:func:`efficientad_ext.inference.result.decide`, the one rule). The normalised
score ``0.5 * score / threshold`` (``normalize_score``) puts the threshold at 0.5
(0 stays 0); it needs a positive threshold, which the normalised maps give (a normal image's
score is the maximum of maps whose 90th percentile of normal pixels is 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext.inference.result import decide
from efficientad_ext.models.efficientad import DecisionThreshold

DEFAULT_TARGET_FPR = 0.01


def _as_scores(scores: Tensor | Sequence[float], name: str) -> Tensor:
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError(f"{name} is empty: a threshold needs at least one image's score")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} holds non-finite values: {int((~torch.isfinite(s)).sum())} of {s.numel()}")
    return s


def threshold_at_fpr(
    normal_scores: Tensor | Sequence[float], target_fpr: float = DEFAULT_TARGET_FPR
) -> DecisionThreshold:
    """The ``1 - target_fpr`` quantile of normal images' scores (see the module docstring)."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    s = _as_scores(normal_scores, "normal_scores")
    value = float(torch.quantile(s, 1.0 - target_fpr))
    _check_positive(value)
    realised = float((s > value).double().mean())
    return DecisionThreshold(
        value, "normal_holdout_fpr", {"target_fpr": target_fpr, "images": int(s.numel()), "holdout_fpr": realised}
    )


def _check_positive(value: float) -> None:
    if not value > 0.0:
        raise ValueError(
            f"the threshold came out at {value:g}, not above 0: the normalised score "
            f"(0.5 * score / threshold) needs a positive one; these scores cannot calibrate a decision"
        )


def decision_metrics(
    scores: Tensor | Sequence[float], labels: Tensor | Sequence[int], threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 (anomalous = positive) of ``score > threshold``."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have one entry per image, got {s.numel()} and {y.numel()}")
    flagged = decide(s, threshold)
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "flagged": tp + fp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def f1_max(scores: Tensor | Sequence[float], labels: Tensor | Sequence[int]) -> tuple[float, float]:
    """(best F1 over all thresholds, that threshold: the midpoint between the two scores it separates)."""
    s = _as_scores(scores, "scores")
    y = torch.as_tensor(labels).flatten().bool()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have one entry per image, got {s.numel()} and {y.numel()}")
    positives = int(y.sum())
    if positives == 0 or positives == y.numel():
        raise ValueError("F1 needs normal and anomalous images")
    order = torch.argsort(s, descending=True)
    s_sorted, y_sorted = s[order], y[order].double()
    tp = torch.cumsum(y_sorted, 0)  # flagging the k + 1 highest scores
    flagged = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    f1 = 2 * tp / (flagged + positives)
    # A threshold can only fall between distinct scores: the last of a run of ties counts.
    distinct = torch.ones_like(y_sorted, dtype=torch.bool)
    distinct[:-1] = s_sorted[:-1] != s_sorted[1:]
    f1 = torch.where(distinct, f1, torch.zeros_like(f1))
    k = int(torch.argmax(f1))
    below = float(s_sorted[k + 1]) if k + 1 < s.numel() else float(s_sorted[k]) - 1.0
    return float(f1[k]), 0.5 * (float(s_sorted[k]) + below)


def f1_optimal_threshold(scores: Tensor | Sequence[float], labels: Tensor | Sequence[int]) -> DecisionThreshold:
    """The F1-optimal threshold on a labelled set (``efficientad calibrate``)."""
    f1, value = f1_max(scores, labels)
    _check_positive(value)
    y = torch.as_tensor(labels).flatten()
    return DecisionThreshold(value, "f1_labelled", {"f1": f1, "images": int(y.numel()), "anomalous": int(y.sum())})
