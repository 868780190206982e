"""Evaluation on a labelled test set: image AUROC, pixel AUROC, AU-PRO (FPR <= 0.3), per
defect type image AUROC, one heatmap PNG per test image and a JSON summary."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.data import ImageDataset, Sample
from efficientad_ext.data.batches import batches
from efficientad_ext.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from efficientad_ext.evaluation.report import (
    DEFAULT_GALLERY_SIZE,
    REPORT_FILE,
    ReportData,
    check_report_request,
    write_report,
)
from efficientad_ext.evaluation.threshold import decision_metrics, f1_max
from efficientad_ext.evaluation.visualize import heatmap_name, save_heatmap_png
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.models.efficientad import EfficientAD

log = logging.getLogger("efficientad_ext.evaluate")


BRANCHES = ("local", "global")  # Algorithm 2's two maps; the anomaly map is their 0.5 / 0.5 sum


@torch.no_grad()
def predict(
    model: EfficientAD,
    samples: Sequence[Sample],
    batch_size: int = 8,
    skip_corrupt: bool = False,
    dtype: torch.dtype | None = torch.float32,
    branches: bool = False,
):
    """Runs the model over ``samples``; returns (dataset, maps [N, H, W] float32 CPU, scores [N])
    and, with ``branches``, a fourth item: ``{"local": (maps, scores), "global": (maps, scores)}``,
    each branch's normalised map alone and its maximum per image.

    ``dtype``: the networks' compute dtype; float32 by default, the precision the map quantiles
    were calibrated in, so that metrics do not depend on the device (``None``: ``infer``'s
    default, bfloat16 on a GPU)."""
    dataset = ImageDataset(list(samples), model.config.image_size, skip_corrupt=skip_corrupt)
    maps, scores = [], []
    parts: dict[str, list[Tensor]] = {name: [] for name in BRANCHES}
    for _, items in batches(dataset, batch_size, label="eval"):
        result = model.infer(torch.stack([it["image"] for it in items]), dtype=dtype, branches=branches)
        maps.append(result.anomaly_map[:, 0].float().cpu())
        scores.append(result.score.float().cpu())
        for name in parts if branches else ():
            parts[name].append(result.branches[name][:, 0].float().cpu())
    if not branches:
        return dataset, torch.cat(maps), torch.cat(scores)
    per_branch = {}
    for name, chunks in parts.items():
        m = torch.cat(chunks)
        per_branch[name] = (m, m.flatten(1).amax(dim=1))
    return dataset, torch.cat(maps), torch.cat(scores), per_branch


def branch_metrics(
    per_branch: dict[str, tuple[Tensor, Tensor]], labels: Tensor, masks: Tensor | None
) -> dict[str, dict[str, float]]:
    """Image AUROC and, with ``masks``, pixel AUROC and AU-PRO of each branch's map alone (its
    image score is the map's maximum)."""
    out = {}
    for name, (maps, scores) in per_branch.items():
        row = {"image_auroc": image_auroc(scores, labels)}
        if masks is not None:
            row["pixel_auroc"] = pixel_auroc(maps, masks)
            row["au_pro"] = au_pro(maps, masks, fpr_limit=0.3)
        out[name] = row
    return out


def _image_metrics(model: EfficientAD, samples: Sequence[Sample], scores: Tensor, labels: Tensor) -> dict[str, Any]:
    """Image AUROC (overall and per defect type), F1-max and the metrics at the model's threshold."""
    result: dict[str, Any] = {}
    if 0 < int(labels.sum()) < len(labels):
        result["image_auroc"] = image_auroc(scores, labels)
        per_type = {}
        for t in sorted({s.defect_type for s in samples if s.label == 1}):
            keep = torch.tensor([s.label == 0 or s.defect_type == t for s in samples])
            per_type[t] = image_auroc(scores[keep], labels[keep])
        result["image_auroc_per_type"] = per_type
        result["f1_max"], result["f1_max_threshold"] = f1_max(scores, labels)
        if model.threshold is not None:
            result["threshold"] = {"value": model.threshold.value, "method": model.threshold.method}
            result["at_threshold"] = decision_metrics(scores, labels, model.threshold.value)
    else:
        log.warning("image AUROC needs normal and anomalous test images; skipped")
    return result


def _pixel_metrics(samples: Sequence[Sample], maps: Tensor, masks: Tensor, labels: Tensor) -> dict[str, Any]:
    """Pixel AUROC and AU-PRO, or ``pixel_metrics_skipped`` saying why there are none."""
    result: dict[str, Any] = {}
    unmasked = [s for s in samples if s.label == 1 and s.mask_path is None]
    if unmasked:
        # A subset's pixel metrics would not be the set's: all anomalous images or none.
        result["pixel_metrics_skipped"] = (
            f"{len(unmasked)} of {int(labels.sum())} anomalous test images have no "
            f"ground-truth mask (e.g. {unmasked[0].path})"
        )
        log.warning("pixel AUROC and AU-PRO skipped: %s; image metrics only", result["pixel_metrics_skipped"])
    elif masks.any():
        result["pixel_auroc"] = pixel_auroc(maps, masks)
        result["au_pro"] = au_pro(maps, masks, fpr_limit=0.3)
    else:
        result["pixel_metrics_skipped"] = "every ground-truth mask is empty"
        log.warning("no non-empty ground-truth masks: pixel AUROC and AU-PRO skipped")
    return result


def _write_outputs(
    model: EfficientAD,
    dataset,
    result: dict[str, Any],
    scores: Tensor,
    maps: Tensor,
    masks: Tensor,
    per_branch: dict[str, tuple[Tensor, Tensor]],
    out_dir: Path,
    write_images: bool,
    report: bool,
    report_gallery: int,
    names: tuple[str, str],
) -> None:
    """``metrics.json``, the heatmap PNGs and the HTML report under ``out_dir``."""
    samples = dataset.samples
    if write_images:
        vmax = float(maps.max())
        for i, sample in enumerate(samples):
            item = dataset[i]
            mask = item["mask"][0] if sample.mask_path is not None else None
            save_heatmap_png(
                item["image"],
                maps[i],
                out_dir / "images" / sample.defect_type / heatmap_name(sample.path),
                mask=mask,
                vmin=0.0,
                vmax=vmax,
            )
    scores_rows = [
        {"path": str(s.path), "defect_type": s.defect_type, "label": s.label, "score": float(v)}
        for s, v in zip(samples, scores)
    ]
    write_text_atomically(out_dir / "metrics.json", json.dumps({**result, "scores": scores_rows}, indent=2))
    if report:
        t = model.threshold
        data = ReportData(
            result,
            samples,
            scores,
            maps,
            masks,
            lambda i: dataset[i]["image"],
            None if t is None else t.value,
            None if t is None else t.method,
            *names,
            branch_maps={name: m for name, (m, _) in per_branch.items()},
        )
        write_report(data, out_dir / REPORT_FILE, gallery_size=report_gallery)


def evaluate(
    model: EfficientAD,
    test_samples: Sequence[Sample],
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    write_images: bool = True,
    skip_corrupt: bool = False,
    report: bool = False,
    report_gallery: int = DEFAULT_GALLERY_SIZE,
    names: tuple[str, str] = ("model", "test set"),
) -> dict[str, Any]:
    """Metrics of ``model`` on ``test_samples`` (normal and anomalous, with masks where known):
    image AUROC (overall and per defect type), F1-max, precision / recall / F1 at the model's
    decision threshold when it has one, pixel AUROC and AU-PRO.

    Writes ``out_dir/metrics.json`` and, with ``write_images``, ``out_dir/images/<type>/<file name>.png`` (:func:`heatmap_name`);
    with ``report``, ``out_dir/report.html`` (:mod:`.report`: ``report_gallery`` images, 0 for
    all; ``names``: the model's and the data set's names on the page).
    Pixel metrics need a mask for every anomalous image (one of them non-empty): a set
    labelled per image only gets the image metrics and ``pixel_metrics_skipped`` saying why;
    image AUROC needs both classes.
    """
    if report:  # refused before the long part, not after it
        check_report_request(out_dir, report_gallery)
    t0 = time.perf_counter()
    dataset, maps, scores, per_branch = predict(model, test_samples, batch_size, skip_corrupt, branches=True)
    samples = dataset.samples
    labels = torch.tensor([s.label for s in samples])
    masks = torch.stack([dataset[i]["mask"][0] for i in range(len(dataset))])
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"images": len(samples), "anomalous": int(labels.sum()), "seconds": round(seconds, 2)}
    result.update(_image_metrics(model, samples, scores, labels))
    result.update(_pixel_metrics(samples, maps, masks, labels))
    if "image_auroc" in result:  # what each of Algorithm 2's two maps finds on its own, beside the combined map
        result["branches"] = branch_metrics(
            per_branch, labels, masks if "pixel_metrics_skipped" not in result else None
        )
        result["branches"]["combined"] = {k: result[k] for k in ("image_auroc", "pixel_auroc", "au_pro") if k in result}
    if out_dir is not None:
        _write_outputs(
            model,
            dataset,
            result,
            scores,
            maps,
            masks,
            per_branch,
            Path(out_dir),
            write_images,
            report,
            report_gallery,
            names,
        )
    return result


def format_summary(result: dict[str, Any]) -> str:
    """A short terminal table of the metrics."""
    rows = [("images", f"{result['images']} ({result['anomalous']} anomalous)")]
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("au_pro", "AU-PRO (FPR<=0.3)")):
        if key in result:
            rows.append((label, f"{result[key]:.4f}"))
    for t, v in result.get("image_auroc_per_type", {}).items():
        rows.append((f"  image AUROC {t}", f"{v:.4f}"))
    if "f1_max" in result:
        rows.append(("F1-max", f"{result['f1_max']:.4f} (at score {result['f1_max_threshold']:.4g})"))
    if "at_threshold" in result:
        m, t = result["at_threshold"], result["threshold"]
        rows.append(
            (
                "at the model's threshold",
                f"{t['value']:.4g} ({t['method']}): precision {m['precision']:.4f}, "
                f"recall {m['recall']:.4f}, F1 {m['f1']:.4f}",
            )
        )
    if "pixel_metrics_skipped" in result:
        rows.append(("pixel metrics", f"skipped: {result['pixel_metrics_skipped']}"))
    for name, m in result.get("branches", {}).items():
        values = ", ".join(
            f"{label} {m[key]:.4f}"
            for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("au_pro", "AU-PRO"))
            if key in m
        )
        rows.append(
            (
                f"{name} map"
                + (
                    " (student vs teacher)"
                    if name == "local"
                    else " (student vs autoencoder)"
                    if name == "global"
                    else ""
                ),
                values,
            )
        )
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
