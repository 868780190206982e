"""``report.html``: one self-contained page of an evaluation (``efficientad eval --report``).

The page holds the headline metrics, a table per defect type, the ROC and PRO curves, the
histograms of normal and anomalous image scores with the decision threshold, and a gallery
of test images (image, heatmap, mask outline), misclassified ones first, each group by
descending score. Every figure is embedded as a data URI and the page loads nothing else
(its Content-Security-Policy forbids it), so the file can be mailed or archived on its own.

Plots are drawn by matplotlib, the page filled by Jinja2 (``pip install "efficientad_ext[report]"``).
"""

from __future__ import annotations

import base64
import datetime
import io
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from efficientad_ext._version import __version__
from efficientad_ext.data import Sample
from efficientad_ext.evaluation.curves import pixel_roc_curve, pro_curve, roc_curve
from efficientad_ext.evaluation.visualize import heatmap_panels
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.inference.result import NORMALISED_THRESHOLD, decide, normalize_score

__all__ = [
    "DEFAULT_GALLERY_SIZE",
    "REPORT_FILE",
    "ReportData",
    "check_report_request",
    "report_libraries_missing",
    "write_report",
]

REPORT_FILE = "report.html"
DEFAULT_GALLERY_SIZE = 120  # images in the gallery: about 3 MB of page (0: all)
_THUMB_HEIGHT = 160  # pixels per gallery panel
_INSTALL_HINT = 'pip install "efficientad_ext[report]"  (matplotlib and Jinja2)'


@dataclass
class ReportData:
    """What an evaluation computed, for the page: the metrics dict of ``evaluate``, the test
    samples, their scores [N], maps [N, H, W] and masks [N, H, W] (at the model's image size),
    and ``image(i)``, the i-th test image as float [3, H, W] in [0, 1] (decoded on demand,
    only for the gallery)."""

    result: dict[str, Any]
    samples: Sequence[Sample]
    scores: Tensor
    maps: Tensor
    masks: Tensor
    image: Callable[[int], Tensor]
    threshold: float | None  # the model's stored decision threshold, if it has one
    threshold_method: str | None
    model_name: str
    dataset_name: str
    # Each of Algorithm 2's two normalised maps alone, [N, H, W] ("local": student vs teacher,
    # "global": student vs autoencoder); with both, each gallery card shows them too.
    branch_maps: dict[str, Tensor] = field(default_factory=dict)


def report_libraries_missing() -> str | None:
    """None when the report can be written; else which libraries are missing and how to install them."""
    missing = []
    for name in ("matplotlib", "jinja2"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return f"{', '.join(missing)} not installed: {_INSTALL_HINT}" if missing else None


def check_report_request(out_dir: str | Path | None, gallery_size: int) -> None:
    """Raises what :func:`write_report` would, before an evaluation computes anything: no
    output folder, a negative gallery size, or (ImportError) matplotlib / Jinja2 missing."""
    if out_dir is None:
        raise ValueError(f"the report needs an output folder (it is written to out_dir/{REPORT_FILE})")
    if gallery_size < 0:
        raise ValueError(f"report_gallery must be >= 0 (0: every test image), got {gallery_size}")
    problem = report_libraries_missing()
    if problem is not None:
        raise ImportError(f"the HTML report needs {problem}")


def write_report(data: ReportData, path: str | Path, gallery_size: int = DEFAULT_GALLERY_SIZE) -> Path:
    """Writes the page to ``path`` atomically and returns the path.

    ``gallery_size``: how many test images the gallery shows (0: all), misclassified first.
    Raises ImportError naming the install command when matplotlib or Jinja2 is missing."""
    check_report_request(Path(path).parent, gallery_size)
    import jinja2

    labels = np.asarray([s.label for s in data.samples], dtype=np.int64)
    scores = data.scores.double().numpy()
    cut, cut_label = _decision_cut(data)
    flagged = None if cut is None else decide(torch.from_numpy(scores), cut).numpy()
    context = {
        "title": f"EfficientAD evaluation: {data.dataset_name}",
        "model_name": data.model_name,
        "dataset_name": data.dataset_name,
        "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "software": _software(),
        "headline": _headline_rows(data.result),
        "skipped": data.result.get("pixel_metrics_skipped"),
        "branches": _branch_rows(data.result),
        "types": _type_rows(data.samples, labels, data.result, flagged),
        "cut_label": cut_label,
        "figures": _figures(data, scores, labels, cut, cut_label),
        "gallery": _gallery(data, scores, labels, flagged, gallery_size),
        "gallery_total": len(data.samples),
        "normalised_at": NORMALISED_THRESHOLD,
    }
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8")
    )
    out = Path(path)
    write_text_atomically(out, template.render(**context))
    return out


def _decision_cut(data: ReportData) -> tuple[float | None, str]:
    """The threshold that sorts the gallery into right and wrong: the model's own; without
    one, the F1-max threshold on this test set (and the page says so)."""
    if data.threshold is not None:
        return data.threshold, f"the model's decision threshold ({data.threshold_method})"
    if "f1_max_threshold" in data.result:
        return float(data.result["f1_max_threshold"]), "the F1-max threshold on this test set (the model stores none)"
    return None, "no threshold (the test set lacks one of the two classes)"


def _software() -> str:
    return f"efficientad_ext {__version__}, torch {torch.__version__}, Python {platform.python_version()}"


def _headline_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("test images", f"{result['images']} ({result['anomalous']} anomalous)")]
    for key, name in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("au_pro", "AU-PRO (FPR ≤ 0.3)")):
        if key in result:
            rows.append((name, f"{result[key]:.4f}"))
    if "f1_max" in result:
        rows.append(("F1-max", f"{result['f1_max']:.4f} at score {result['f1_max_threshold']:.4g}"))
    if "at_threshold" in result:
        m, t = result["at_threshold"], result["threshold"]
        rows.append(
            (
                f"at the threshold {t['value']:.4g} ({t['method']})",
                f"precision {m['precision']:.4f}, recall {m['recall']:.4f}, F1 {m['f1']:.4f} "
                f"({m['false_positives']} false alarms, {m['false_negatives']} missed)",
            )
        )
    return rows


BRANCH_NAMES = {
    "local": "local (student vs. teacher)",
    "global": "global (student vs. autoencoder)",
    "combined": "combined (0.5 / 0.5)",
}


def _branch_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One row per map (local, global, combined) with the metrics eval computed for it."""
    rows = []
    for name, m in result.get("branches", {}).items():
        rows.append(
            {
                "name": BRANCH_NAMES.get(name, name),
                **{k: f"{m[k]:.4f}" if k in m else "" for k in ("image_auroc", "pixel_auroc", "au_pro")},
            }
        )
    return rows


def _type_rows(
    samples: Sequence[Sample], labels: np.ndarray, result: dict[str, Any], flagged: np.ndarray | None
) -> list[dict[str, str]]:
    """One row per defect type (and one for the normal images): count, image AUROC against
    the normal images, and the share ``flagged`` (None: no threshold)."""
    per_type = result.get("image_auroc_per_type", {})
    rows = []
    for t in sorted({s.defect_type for s in samples}, key=lambda t: (t != "good", t)):
        keep = np.asarray([s.defect_type == t for s in samples])
        normal = bool((labels[keep] == 0).all())
        share = "" if flagged is None else f"{flagged[keep].mean():.1%}"
        rows.append(
            {
                "type": t,
                "images": str(int(keep.sum())),
                "auroc": f"{per_type[t]:.4f}" if t in per_type else "",
                "flagged": share,
                "flagged_means": "false-alarm rate" if normal else "recall",
            }
        )
    return rows


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(
    data: ReportData, scores: np.ndarray, labels: np.ndarray, cut: float | None, cut_label: str
) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    figures = []
    pixel = "pixel_auroc" in data.result
    both_classes = 0 < labels.sum() < labels.size
    if both_classes or pixel:
        fig = Figure(figsize=(5.2, 4.4))
        ax = fig.add_subplot()
        if both_classes:
            f, t = roc_curve(scores, labels)
            ax.plot(f, t, label=f"images (AUROC {data.result['image_auroc']:.4f})")
        if pixel:
            f, t = pixel_roc_curve(data.maps, data.masks)
            ax.plot(f, t, label=f"pixels (AUROC {data.result['pixel_auroc']:.4f})")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")
        figures.append({"name": "ROC curves", "uri": _png_uri(fig), "caption": ""})
    if pixel:
        fig = Figure(figsize=(5.2, 4.4))
        ax = fig.add_subplot()
        f, p = pro_curve(data.maps, data.masks, fpr_limit=0.3)
        ax.plot(f, p, label=f"AU-PRO (FPR ≤ 0.3) {data.result['au_pro']:.4f}")
        ax.set(
            xlabel="false positive rate (normal pixels)",
            ylabel="per-region overlap",
            title="PRO",
            xlim=(0, 0.3),
            ylim=(0, 1.01),
        )
        ax.legend(loc="lower right")
        figures.append({"name": "PRO curve", "uri": _png_uri(fig), "caption": ""})
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    finite = np.isfinite(scores)
    bins = np.histogram_bin_edges(scores[finite], bins=40) if finite.any() else 40
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        chosen = scores[(labels == value) & finite]
        if chosen.size:
            ax.hist(chosen, bins=bins, alpha=0.55, color=colour, label=f"{name} ({chosen.size})")
    if cut is not None:
        ax.axvline(cut, color="black", linestyle="--", linewidth=1.2, label=f"threshold {cut:.4g}")
    ax.set(xlabel="image score", ylabel="images", title="Image scores")
    ax.legend(loc="upper right", fontsize="small")
    figures.append({"name": "Score histograms", "uri": _png_uri(fig), "caption": f"dashed: {cut_label}"})
    return figures


def _verdict(label: int, flagged: bool | None) -> str:
    if flagged is None:
        return "no threshold"
    if flagged:
        return "false alarm" if label == 0 else "found"
    return "missed" if label == 1 else "passed"


def _gallery_order(scores: np.ndarray, labels: np.ndarray, flagged: np.ndarray | None) -> list[int]:
    """Misclassified images first, then the rest; each group by descending score (NaN first:
    a broken input is the first thing to look at)."""
    key = np.where(np.isnan(scores), np.inf, scores)
    wrong = np.zeros_like(labels, dtype=bool) if flagged is None else (flagged != (labels == 1))
    return sorted(range(len(scores)), key=lambda i: (not wrong[i], -key[i], i))


def _gallery(
    data: ReportData, scores: np.ndarray, labels: np.ndarray, flagged: np.ndarray | None, size: int
) -> list[dict[str, str]]:
    order = _gallery_order(scores, labels, flagged)
    if size:
        order = order[:size]
    maps = data.maps
    vmax = _colour_top([maps])  # one colour scale for the whole gallery
    branches = [data.branch_maps[k] for k in ("local", "global") if k in data.branch_maps]
    if len(branches) < 2:
        branches = []
    # One scale for both branch maps (they are normalised alike), so a card shows which one
    # raised the score.
    vmax_branches = _colour_top(branches) if branches else 1.0
    items = []
    for rank, i in enumerate(order, start=1):
        sample = data.samples[i]
        mask = data.masks[i] if sample.mask_path is not None else None
        image = data.image(i)
        width = max(1, round(image.shape[-2] / _THUMB_HEIGHT))  # about one thumbnail pixel after scaling
        strip = np.concatenate(heatmap_panels(image, maps[i], mask, 0.0, vmax, outline_width=width + 1), axis=1)
        branch_strip = [heatmap_panels(image, m[i], None, 0.0, vmax_branches)[1] for m in branches]
        verdict = _verdict(sample.label, None if flagged is None else bool(flagged[i]))
        score = float(scores[i])
        normalised = (
            "" if data.threshold is None else f"{float(normalize_score(torch.tensor(score), data.threshold)):.3g}"
        )
        items.append(
            {
                "rank": str(rank),
                "name": Path(sample.path).name,
                "type": sample.defect_type,
                "score": f"{score:.4g}",
                "normalised": normalised,
                "verdict": verdict,
                "wrong": verdict in ("false alarm", "missed"),
                "uri": _thumbnail_uri(strip),
                "branch_uri": _thumbnail_uri(np.concatenate(branch_strip, axis=1)) if branch_strip else "",
            }
        )
    return items


def _colour_top(maps: Sequence[Tensor]) -> float:
    """The top of a colour scale shared by ``maps``: their largest finite value (1.0 if none)."""
    finite = [m[torch.isfinite(m)] for m in maps]
    tops = [float(f.max()) for f in finite if f.numel()]
    return max(tops) if tops else 1.0


def _thumbnail_uri(strip: np.ndarray) -> str:
    """A uint8 RGB strip of panels scaled to the gallery's height, as a JPEG data URI."""
    from PIL import Image

    img = Image.fromarray(strip)
    img = img.resize((max(1, round(img.width * _THUMB_HEIGHT / img.height)), _THUMB_HEIGHT), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
