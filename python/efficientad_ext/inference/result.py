"""What inference returns (here, so the engine needs nothing from the model module)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORMALISED_THRESHOLD = 0.5  # where the threshold falls on the normalised score


def decide(score: Tensor, threshold: float) -> Tensor:
    """The decision rule, everywhere it is applied: anomalous when ``score > threshold``, and
    when the score is NaN (broken input is flagged, never silently normal)."""
    return (score > threshold) | torch.isnan(score)


def normalize_score(score: Tensor, threshold: float) -> Tensor:
    """``0.5 * score / threshold``: the threshold at 0.5 (:data:`NORMALISED_THRESHOLD`), 0 stays 0."""
    if not (threshold > 0.0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be finite and > 0, got {threshold}")
    return score * (NORMALISED_THRESHOLD / threshold)


class InferenceResult(tuple):
    """``anomaly_map`` [B, 1, H, W] at the input resolution and ``score`` [B]; it unpacks as
    that pair (``anomaly_map, score = model.infer(x)``).

    With the model's decision threshold (a model file written by ``train`` has one, see
    :mod:`efficientad_ext.evaluation.threshold`) it also gives ``is_anomalous`` (bool [B]:
    ``score > threshold``; a NaN score counts as anomalous) and ``normalized_score``
    (``0.5 * score / threshold``: the threshold at 0.5); both are None without a threshold.

    Asked for (``infer(..., branches=True)``), ``branches`` holds the two normalised maps the
    anomaly map is the mean of, each [B, 1, H, W] like it: ``"local"`` (student vs teacher) and
    ``"global"`` (student vs autoencoder); ``anomaly_map == 0.5 * (local + global)`` to rounding.
    None when not asked for.
    """

    def __new__(
        cls,
        anomaly_map: Tensor,
        score: Tensor,
        threshold: float | None = None,
        branches: dict[str, Tensor] | None = None,
    ) -> InferenceResult:
        self = super().__new__(cls, (anomaly_map, score))
        self.threshold = threshold
        self.branches = branches
        return self

    def __getnewargs__(self):  # pickling and copying keep the threshold and the branches
        return (self[0], self[1], self.threshold, self.branches)

    @property
    def anomaly_map(self) -> Tensor:
        return self[0]

    @property
    def score(self) -> Tensor:
        return self[1]

    @property
    def is_anomalous(self) -> Tensor | None:
        if self.threshold is None:
            return None
        return decide(self.score, self.threshold)

    @property
    def normalized_score(self) -> Tensor | None:
        if self.threshold is None:
            return None
        return normalize_score(self.score, self.threshold)

    def __repr__(self) -> str:
        return f"InferenceResult(anomaly_map={tuple(self.anomaly_map.shape)}, score={self.score}, threshold={self.threshold})"
