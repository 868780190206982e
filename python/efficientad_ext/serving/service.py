"""The model behind the endpoints: one loaded model, its card, its batcher and its metrics.

Kept free of the web framework, so what a request is scored by is ``EfficientAD.infer_each``,
which gives every image the values the plain ``EfficientAD.infer`` a Python user calls gives it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from efficientad_ext._version import __version__
from efficientad_ext.evaluation.visualize import heatmap_panels
from efficientad_ext.inference.folder import HEATMAP_VMAX
from efficientad_ext.inference.networks import resolve_dtype
from efficientad_ext.inference.result import decide, normalize_score
from efficientad_ext.models.efficientad import EfficientAD
from efficientad_ext.serving.batcher import DynamicBatcher, ImageScore
from efficientad_ext.serving.config import ServeConfig
from efficientad_ext.serving.metrics import ServiceMetrics


class ScoringService:
    """``model`` (loaded from ``model_path``, whose integrity digest is ``digest``) served
    under ``config``, computing in ``dtype`` (None: what ``infer`` chooses for the model)."""

    def __init__(
        self,
        model: EfficientAD,
        model_path: str | Path,
        digest: str | None,
        config: ServeConfig,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_name = Path(model_path).name  # never the absolute path: the card is public
        self.digest = digest
        self.config = config
        self.dtype = resolve_dtype(model, dtype)
        self.threshold = model.threshold.value if model.threshold is not None else None
        self.metrics = ServiceMetrics()
        self.receiving = 0  # requests being read or decoded; the batcher waits only while > 0
        self.ready = False
        self.batcher = DynamicBatcher(
            self._score_batch, config.max_batch, config.max_wait_ms, lambda: self.receiving, self.metrics.observe_batch
        )

    @torch.no_grad()
    def _score_batch(self, images: list[Tensor], want_maps: bool) -> tuple[Tensor, list[Tensor] | None]:
        results = self.model.infer_each(images, dtype=self.dtype)
        scores = torch.cat([r.score.float().cpu() for r in results])
        return scores, ([r.anomaly_map[0, 0].float().cpu() for r in results] if want_maps else None)

    def warm_up(self) -> None:
        """One batch-1 inference at the model's size (weights cast, kernels chosen) before ``ready``."""
        h, w = self.model.config.image_size
        self._score_batch([torch.full((3, h, w), 0.5)], False)

    def card(self) -> dict[str, Any]:
        """``GET /v1/model``: what the model is, how it decides, how it is served."""
        m = self.model
        threshold = None
        if m.threshold is not None:
            threshold = {"value": m.threshold.value, "method": m.threshold.method, "details": m.threshold.details}
        return {
            "file": self.model_name,
            "digest": self.digest,
            "architecture": f"EfficientAD-{m.config.arch[0].upper()}",
            "arch": m.config.arch,
            "image_size": list(m.config.image_size),
            "padded": m.config.padded,
            "teacher_channels": m.config.teacher_channels,
            "calibrated": bool(m.calibrated),
            "threshold": threshold,
            "teacher": m.record.teacher,
            "training_steps": m.record.steps,
            "penalty_images": m.record.penalty_images,
            "device": str(m.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            "efficientad_ext": __version__,
        }

    def answer(self, name: str, image: Tensor, scored: ImageScore, elapsed_s: float) -> dict[str, Any]:
        """One image's JSON answer (a NaN score is ``null`` and anomalous, as ``decide`` says)."""
        score = torch.tensor([scored.score], dtype=torch.float32)
        out: dict[str, Any] = {
            "name": name,
            "width": int(image.shape[-1]),
            "height": int(image.shape[-2]),
            "score": None if score.isnan().item() else float(score[0]),
            "normalized_score": None,
            "is_anomalous": None,
            "threshold": self.threshold,
            "model_digest": self.digest,
            "batch_size": scored.batch_size,
            "time_ms": round(elapsed_s * 1000.0, 3),
        }
        if self.threshold is not None:
            normalised = float(normalize_score(score, self.threshold)[0])
            out["normalized_score"] = None if normalised != normalised else normalised
            out["is_anomalous"] = bool(decide(score, self.threshold)[0])
        if scored.anomaly_map is not None:
            out["heatmap_png"] = heatmap_png_base64(image, scored.anomaly_map)
        return out


def heatmap_png_base64(image: Tensor, anomaly_map: Tensor) -> str:
    """The image blended with its jet-coloured map, as base64 PNG. The colour scale is the one
    ``efficientad infer`` uses for folders (map values [0, HEATMAP_VMAX]), so one value has one
    colour in every answer of one model."""
    overlay = heatmap_panels(image, anomaly_map, vmin=0.0, vmax=HEATMAP_VMAX)[1]
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
