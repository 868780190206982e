"""``efficientad infer`` over a folder: scores.csv, heatmaps and run.json in memory that does
not grow with the folder.

Each batch's maps are turned into heatmap PNGs and dropped before the next batch; only the
scores (one float per image) are kept until the end. So the heatmaps cannot be scaled by the
folder's maximum; they use a fixed rule instead: the colour scale spans map values
[0, :data:`HEATMAP_VMAX`]. A calibrated model's maps are normalised so that the 99.5% quantile
of normal validation pixels (its q_b) maps to 0.1 (``0.1 (m - q_a) / (q_b - q_a)``, both
halves summed with weight 0.5), so 0.1 — the upper end of normal — is drawn mid-scale (green)
and twice that saturates (red); the same value has the same colour in every image and every
run of one model. (Uncalibrated models' maps follow the same scale without that meaning.)

Order of writes, each atomic: ``run.json`` (``running``), heatmaps batch by batch,
``scores.csv``, ``run.json`` (``complete``); see :mod:`efficientad_ext.run_record`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from efficientad_ext.data import ImageDataset, Sample
from efficientad_ext.data.batches import batches
from efficientad_ext.evaluation.visualize import heatmap_name, save_heatmap_png
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.run_record import RunRecord
from efficientad_ext.formats.stale_files import remove_stale_temp_files
from efficientad_ext.inference.result import decide, normalize_score
from efficientad_ext.models.efficientad import EfficientAD

HEATMAP_VMAX = 0.2


def score_table(paths: Sequence[str], scores: Sequence[float], threshold: float | None) -> tuple[list[str], list[list]]:
    """``scores.csv``'s header and rows (one-process and torchrun ``infer`` alike): path and
    score (``%.6g``); with the model's decision threshold also ``is_anomalous`` (1/0) and
    ``normalized_score`` (the threshold at 0.5), by the one rule (``decide`` /
    ``normalize_score``) on the float32 scores."""

    values = torch.tensor(list(scores), dtype=torch.float32)
    if threshold is None:
        return ["path", "score"], [[p, f"{float(v):.6g}"] for p, v in zip(paths, values)]
    flagged = decide(values, threshold).tolist()
    normalised = normalize_score(values, threshold).tolist()
    rows = [[p, f"{float(v):.6g}", int(a), f"{n:.6g}"] for p, v, a, n in zip(paths, values, flagged, normalised)]
    return ["path", "score", "is_anomalous", "normalized_score"], rows


@torch.no_grad()
def infer_folder(
    model: EfficientAD,
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    batch_size: int = 8,
    skip_corrupt: bool = False,
    write_images: bool = True,
    broken_links: int = 0,
) -> int:
    """Scores ``paths`` into ``out_dir/scores.csv`` (columns ``path,score``, plus
    ``is_anomalous`` (1/0) and ``normalized_score`` when the model has a decision threshold)
    and ``heatmaps/<file name>.png`` (:func:`heatmap_name`); returns
    the number of images scored. Memory is one batch of maps whatever the number of images.
    ``broken_links``: the symbolic links of the folder left out of ``paths``, for ``run.json``."""
    out = Path(out_dir)
    remove_stale_temp_files([out, out / "heatmaps"])
    record = RunRecord(out, "infer", model_path).start()
    samples = [Sample(path=Path(p), label=0, defect_type="images", mask_path=None) for p in paths]
    dataset = ImageDataset(samples, model.config.image_size, skip_corrupt=skip_corrupt)
    scores: list[float] = []
    for _, items in batches(dataset, batch_size, label="infer"):
        result = model.infer(torch.stack([it["image"] for it in items]), dtype=torch.float32)
        maps = result.anomaly_map[:, 0].float().cpu()
        scores.extend(float(v) for v in result.score.float().cpu())
        if write_images:
            for item, m in zip(items, maps):
                png = out / "heatmaps" / heatmap_name(item["path"])
                save_heatmap_png(item["image"], m, png, vmin=0.0, vmax=HEATMAP_VMAX)
    buf = io.StringIO()
    writer = csv.writer(buf)
    threshold = None if model.threshold is None else model.threshold.value
    header, rows = score_table([str(s.path) for s in dataset.samples], scores, threshold)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomically(out / "scores.csv", buf.getvalue())
    record.finish(
        images=len(paths),
        scored=len(scores),
        skipped=len(dataset.skipped),
        heatmaps=len(scores) if write_images else 0,
        broken_links=broken_links,
    )
    return len(scores)
