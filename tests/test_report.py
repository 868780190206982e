"""The HTML evaluation report: its curves, its gallery order, the page's content, and the
page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from browser_helpers import headless_chromium
from efficientad_ext import DecisionThreshold, EfficientAD
from efficientad_ext.api import evaluate
from efficientad_ext.cli import main
from efficientad_ext.data import Sample
from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.evaluation.curves import pixel_roc_curve, pro_curve, roc_curve
from efficientad_ext.evaluation.metrics import au_pro, auroc, pixel_auroc
from efficientad_ext.evaluation.report import ReportData, _gallery_order, report_libraries_missing, write_report

needs_report_libraries = pytest.mark.skipif(
    report_libraries_missing() is not None, reason=str(report_libraries_missing())
)


# --- curves -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_area_is_the_exact_auroc_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 97)
    labels[:2] = (0, 1)
    scores = rng.integers(0, 12, 97) + 3 * labels  # many ties, some overlap
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)
    assert len(fpr) == len(np.unique(scores)) + 1  # one point per distinct score


def _maps_and_masks(seed, n=7, h=37, w=41):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for i in range(0, n, 2):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        masks[i, y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
    maps = rng.random((n, h, w)).astype(np.float32) + 0.6 * masks
    return maps, masks


@pytest.mark.parametrize("seed", range(3))
def test_pixel_roc_and_pro_curves_integrate_to_the_exact_metrics(seed):
    maps, masks = _maps_and_masks(seed)
    fpr, tpr = pixel_roc_curve(maps, masks, bins=2000)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pixel_auroc(maps, masks), abs=2e-3)  # binned: close, not exact
    fpr, pro = pro_curve(maps, masks, fpr_limit=0.3, points=301)
    assert fpr[0] == 0.0 and fpr[-1] == pytest.approx(0.3, abs=1e-3) and np.all(np.diff(fpr) >= 0)
    assert np.all((0 <= pro) & (pro <= 1)) and np.all(np.diff(pro) >= 0)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(au_pro(maps, masks, 0.3), abs=5e-3)


def test_curves_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="both normal and anomalous pixels"):
        pixel_roc_curve(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="all masks are empty"):
        pro_curve(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_curve(np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool), fpr_limit=0)


def test_gallery_puts_misclassified_first_then_by_descending_score():
    scores = np.array([0.9, 0.2, 0.7, float("nan"), 0.4, 0.6])
    labels = np.array([0, 1, 1, 0, 0, 1])
    flagged = (scores > 0.5) | np.isnan(scores)
    # wrong: 0 (false alarm 0.9), 3 (NaN: flagged, normal), 1 (missed 0.2); right: 2, 5, 4
    assert _gallery_order(scores, labels, flagged) == [3, 0, 1, 2, 5, 4]
    assert _gallery_order(scores, labels, None) == [3, 0, 2, 5, 4, 1]


# --- the page -----------------------------------------------------------------------------


def _report_data(tmp_path, threshold=0.5, names=("m.safetensors", "set")):
    rng = np.random.default_rng(0)
    types = ["good", "good", "good", "crack", "crack", "hole<b>"]  # a name that needs escaping
    samples = [
        Sample(tmp_path / f"{i}<x>.png", int(t != "good"), t, None if t == "good" else tmp_path / f"m{i}.png")
        for i, t in enumerate(types)
    ]
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[3:, 8:16, 8:16] = True
    maps = torch.from_numpy(rng.random((6, 32, 32)).astype(np.float32)) + 0.8 * masks
    scores = torch.tensor([0.1, 0.7, 0.2, 0.9, 0.3, 0.8])  # one false alarm (1), one miss (4)
    labels = torch.tensor([s.label for s in samples])
    from efficientad_ext.evaluation.metrics import image_auroc

    result = {
        "images": 6,
        "anomalous": 3,
        "image_auroc": image_auroc(scores, labels),
        "image_auroc_per_type": {"crack": 0.5, "hole<b>": 1.0},
        "f1_max": 0.8,
        "f1_max_threshold": 0.25,
        "pixel_auroc": pixel_auroc(maps, masks),
        "au_pro": au_pro(maps, masks),
    }
    return ReportData(
        result,
        samples,
        scores,
        maps,
        masks,
        lambda i: torch.rand(3, 32, 32),
        threshold,
        None if threshold is None else "normal_holdout_fpr",
        *names,
    )


@needs_report_libraries
def test_page_holds_the_metrics_table_figures_and_gallery_in_order(tmp_path):
    page = write_report(_report_data(tmp_path), tmp_path / "r" / "report.html").read_text()
    assert "default-src 'none'" in page  # self-contained: the page may load nothing
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "<script" not in page.lower()
    assert "hole&lt;b&gt;" in page and "hole<b>" not in page  # names are escaped
    images = re.findall(r'<img src="data:image/(png|jpeg);base64,', page)
    assert images.count("png") == 3 and images.count("jpeg") == 6  # ROC, PRO, histograms; 6 test images
    captions = re.findall(r'<div class="caption">#(\d+) ([^ ]+) ', page)
    assert [int(r) for r, _ in captions] == list(range(1, 7))
    order = [html.unescape(name).split("/")[1] for _, name in captions]
    assert order == ["1<x>.png", "4<x>.png", "3<x>.png", "5<x>.png", "2<x>.png", "0<x>.png"]
    assert page.count('class="card wrong"') == 2 and "false alarm" in page and "missed" in page
    assert "the model&#39;s decision threshold (normal_holdout_fpr)" in page
    assert "(normalised 0.9)" in page  # 0.5 * 0.9 / 0.5
    for row in ("good", "crack"):
        assert f"<td>{row}</td>" in page
    assert "33.3% (false-alarm rate)" in page and "50.0% (recall)" in page


@needs_report_libraries
def test_gallery_shows_each_branch_map_on_one_scale_of_their_own(tmp_path):
    import base64
    import io

    from PIL import Image

    data = _report_data(tmp_path)
    local, global_ = torch.zeros(6, 32, 32), torch.zeros(6, 32, 32)
    local[3], global_[5] = 2.0, 2.0  # image 3: only the local map is hot; image 5: only the global one
    data.branch_maps = {"local": local, "global": global_}
    page = write_report(data, tmp_path / "report.html").read_text()
    found = re.findall(
        r'<img class="branches" src="data:image/jpeg;base64,([^"]+)" alt="([^"]+): local and global', page
    )
    assert len(found) == 6 and "the local map (student vs. teacher, left)" in page
    strips = {html.unescape(alt).split("/")[1]: b64 for b64, alt in found}

    def red_minus_blue(name):  # per half of the strip: hot (jet's red) > 0 > cold (jet's blue)
        strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(strips[name]))).convert("RGB"), dtype=np.float32)
        assert strip.shape[1] == 2 * strip.shape[0]  # two square panels at the gallery's height
        half = strip.shape[1] // 2
        return [float((p[..., 0] - p[..., 2]).mean()) for p in (strip[:, :half], strip[:, half:])]

    left, right = red_minus_blue("3<x>.png")
    assert left > 40 and right < -40
    left, right = red_minus_blue("5<x>.png")
    assert left < -40 and right > 40
    left, right = red_minus_blue("0<x>.png")  # both maps 0: both halves cold
    assert left < -40 and right < -40
    data.branch_maps = {"local": local}  # one map alone is no pair: no strip
    assert 'class="branches"' not in write_report(data, tmp_path / "r1.html").read_text()


@needs_report_libraries
def test_page_without_threshold_or_masks_says_so(tmp_path):
    data = _report_data(tmp_path, threshold=None)
    for key in ("pixel_auroc", "au_pro"):
        del data.result[key]
    data.result["pixel_metrics_skipped"] = "3 of 3 anomalous test images have no ground-truth mask"
    page = write_report(data, tmp_path / "report.html", gallery_size=2).read_text()
    assert "the F1-max threshold on this test set (the model stores none)" in page
    assert "Pixel metrics skipped: 3 of 3" in page and "PRO curve" not in page
    assert re.findall(r"<p class=\"meta\">(\d+) of (\d+) test images", page) == [("2", "6")]
    assert "normalised" not in page.split('class="gallery"')[1]


def test_report_is_refused_early_and_clearly(tmp_path, monkeypatch):
    import efficientad_ext.evaluation.report as report

    model = EfficientAD().eval()
    data = make_synthetic_dataset(tmp_path / "d", n_train=1, n_test_good=1, n_test_defect=1)
    with pytest.raises(ValueError, match="the report needs an output folder"):
        evaluate(model, data, None, report=True)
    with pytest.raises(ValueError, match="report_gallery must be >= 0"):
        evaluate(model, data, tmp_path / "e", report=True, report_gallery=-1)
    monkeypatch.setattr(
        report, "report_libraries_missing", lambda: 'jinja2 not installed: pip install "efficientad_ext[report]"'
    )
    with pytest.raises(ImportError, match=r"efficientad_ext\[report\]"):
        report.write_report(_report_data(tmp_path), tmp_path / "r.html")
    with pytest.raises(ImportError, match="jinja2 not installed"):  # before any image is scored
        evaluate(model, data, tmp_path / "e", report=True)
    assert not (tmp_path / "e" / "metrics.json").exists()
    with pytest.raises(SystemExit):
        main(["eval", "m.safetensors", str(data), "--out", str(tmp_path / "x"), "--report", "--report-gallery", "-1"])


@pytest.fixture(scope="module")
def evaluated_report(tmp_path_factory):
    """A report written by evaluate() for a model with a stored threshold, on a small
    synthetic set: 4 normal and 5 anomalous test images, with masks."""
    if report_libraries_missing() is not None:
        pytest.skip(report_libraries_missing())
    root = tmp_path_factory.mktemp("report")
    data = make_synthetic_dataset(root / "data", n_train=1, n_test_good=4, n_test_defect=5, seed=3)
    torch.manual_seed(0)
    model = EfficientAD().eval()
    model.threshold = DecisionThreshold(1.0, "normal_holdout_fpr", {"target_fpr": 0.01, "images": 10})
    result = evaluate(model, data, root / "eval", write_images=False, report=True)
    return root / "eval" / "report.html", result


def test_evaluate_writes_the_report(evaluated_report):
    path, result = evaluated_report
    page = path.read_text()
    assert result["images"] == 9 and f"{result['image_auroc']:.4f}" in page and f"{result['au_pro']:.4f}" in page
    assert len(re.findall(r'<img src="data:image/jpeg', page)) == 9
    assert len(re.findall(r'<img class="branches" src="data:image/jpeg', page)) == 9  # each card: its two maps
    assert "Each map on its own" in page  # the per-branch table, every branch's metrics
    for name in ("local", "global", "combined"):
        assert f"{result['branches'][name]['image_auroc']:.4f}" in page
    assert not list(path.parent.glob(".*.tmp"))  # written atomically


# --- in a real browser --------------------------------------------------------------------


def _open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Loads the page in headless chromium; returns its console errors, page errors, failed
    requests and the state of every <img>, and saves a full-page screenshot."""
    seen: dict = {"console_errors": [], "page_errors": [], "failed_requests": []}
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
        page.on("requestfailed", lambda r: seen["failed_requests"].append(r.url))
        page.goto(page_path.resolve().as_uri(), wait_until="load", timeout=60_000)
        seen["images"] = page.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, "
            "h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
        )
        seen["title"] = page.title()
        page.screenshot(path=str(screenshot), full_page=True)
    return seen


def test_report_renders_in_headless_chromium(evaluated_report, tmp_path):
    path, _ = evaluated_report
    shot = tmp_path / "report.png"
    seen = _open_in_chromium(path, shot)
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["failed_requests"] == []
    assert seen["title"].startswith("EfficientAD evaluation")
    assert len(seen["images"]) == 3 + 2 * 9  # ROC, PRO, histograms + the gallery (heatmaps, branch maps)
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[1] == 1280 and pixels.shape[0] > 900  # the whole page, longer than the window
    assert pixels.std() > 20  # figures and thumbnails drawn, not a blank page
    keep = os.environ.get("EFFICIENTAD_TEST_ARTIFACTS")
    if keep:  # CI keeps the screenshot beside its log
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_the_browser_check_sees_a_broken_page(evaluated_report, tmp_path):
    """The check above can fail: a page that tries to load something from outside (blocked by
    the page's policy) and an image that does not decode are both caught."""
    path, _ = evaluated_report
    broken = tmp_path / "broken.html"
    broken.write_text(
        path.read_text().replace(
            "</body>",
            '<img src="http://127.0.0.1:9/x.png" alt="outside">'
            '<img src="data:image/png;base64,AAAA" alt="corrupt"></body>',
        )
    )
    seen = _open_in_chromium(broken, tmp_path / "broken.png")
    assert seen["console_errors"], seen
    corrupt = next(i for i in seen["images"] if i["alt"] == "corrupt")
    assert corrupt["w"] == 0
