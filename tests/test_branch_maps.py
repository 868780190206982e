"""The local and global maps each on its own: ``infer(branches=True)`` against the plain-torch
reference of Algorithm 2, and eval's per-branch metrics (metrics.json, the summary, the report)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from efficientad_ext import reference
from efficientad_ext.api import evaluate
from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.evaluation.evaluator import branch_metrics, format_summary
from efficientad_ext.evaluation.metrics import image_auroc
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig


def _calibrated(config: ModelConfig, seed: int = 0) -> EfficientAD:
    torch.manual_seed(seed)
    model = EfficientAD(config).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.01)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([1e-3, 4e-3, 2e-4, 9e-4]))  # distinct per branch: a swap shows
    return model


def _reference_branches(model: EfficientAD, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Algorithm 2's two normalised maps in plain torch: raw maps, border, resize, quantiles."""
    xn, size = model.prepare(x)
    with torch.no_grad():
        t, s, a = model.teacher(xn), model.student(xn), model.autoencoder(xn, model.feature_size)
    st, ae = reference.anomaly_maps_raw(t, model.teacher_mean, model.teacher_std, s, a)
    q, b = model.quantiles, model.map_border
    out = {}
    for name, m, qa, qb in (("local", st, q[0], q[1]), ("global", ae, q[2], q[3])):
        m = F.interpolate(F.pad(m, (b,) * 4), size=size, mode="bilinear", align_corners=False)
        out[name] = 0.1 * (m - qa) / (qb - qa)
    return out


@pytest.mark.parametrize(
    "padded,size,in_size",
    [(False, (256, 256), (256, 256)), (True, (256, 320), (300, 333))],
    ids=["unpadded", "padded_nonsquare_resized"],
)
def test_infer_branches_match_the_reference(padded, size, in_size):
    model = _calibrated(ModelConfig(padded=padded, image_size=size))
    x = torch.rand(2, 3, *in_size)
    result = model.infer(x, dtype=torch.float32, branches=True)
    expected = _reference_branches(model, x)
    for name in ("local", "global"):
        got = result.branches[name]
        assert got.shape == result.anomaly_map.shape == (2, 1, *in_size)
        torch.testing.assert_close(got, expected[name], rtol=1e-4, atol=1e-5 * float(expected[name].abs().max()))
    combined = 0.5 * (result.branches["local"] + result.branches["global"])
    torch.testing.assert_close(result.anomaly_map, combined, rtol=1e-4, atol=1e-5 * float(combined.abs().max()))
    plain = model.infer(x, dtype=torch.float32)
    assert plain.branches is None
    torch.testing.assert_close(plain.anomaly_map, result.anomaly_map)


def test_branch_metrics_score_each_map_by_its_maximum():
    labels = torch.tensor([0, 0, 1, 1])
    local = torch.zeros(4, 8, 8)
    local[2, 3, 3], local[3, 0, 0] = 5.0, 4.0  # finds both defects
    glob = torch.zeros(4, 8, 8)
    glob[0, 1, 1] = 3.0  # flags a normal image: below chance
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[2, 3, 3] = masks[3, 0, 0] = True
    per_branch = {"local": (local, local.flatten(1).amax(1)), "global": (glob, glob.flatten(1).amax(1))}
    out = branch_metrics(per_branch, labels, masks)
    assert out["local"]["image_auroc"] == 1.0 and out["local"]["pixel_auroc"] == 1.0
    assert out["global"]["image_auroc"] == image_auroc(torch.tensor([3.0, 0, 0, 0]), labels) < 0.5
    assert set(out) == {"local", "global"} and set(out["global"]) == {"image_auroc", "pixel_auroc", "au_pro"}
    assert set(branch_metrics(per_branch, labels, None)["local"]) == {"image_auroc"}


def test_evaluate_reports_every_branch(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_train=1, n_test_good=3, n_test_defect=4, seed=2)
    model = _calibrated(ModelConfig())
    result = evaluate(model, data, tmp_path / "e", write_images=False)
    branches = result["branches"]
    assert set(branches) == {"local", "global", "combined"}
    # the combined row is the headline: the same maps and scores
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert branches["combined"][key] == result[key]
    for name in ("local", "global"):
        assert 0.0 <= branches[name]["image_auroc"] <= 1.0 and 0.0 <= branches[name]["au_pro"] <= 1.0
    on_disk = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert on_disk["branches"] == branches
    summary = format_summary(result)
    assert "local map (student vs teacher)" in summary and "global map (student vs autoencoder)" in summary
    assert f"image AUROC {branches['global']['image_auroc']:.4f}" in summary
