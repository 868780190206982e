"""``benchmarks/variant_accuracy.py``: one model, each inference variant's metrics beside the
reference's, and the decisions a variant flips (issue #29 item 2's accuracy gate)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from efficientad_ext import DecisionThreshold, EfficientAD, save_model
from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.training.precision import cpu_has_native_bf16

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "variant_accuracy.py"


def _module():
    spec = importlib.util.spec_from_file_location("variant_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_and_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    data = make_synthetic_dataset(root / "set", n_train=1, n_test_good=2, n_test_defect=3, size=64)
    torch.manual_seed(0)
    model = EfficientAD().eval()
    with torch.no_grad():  # quantiles that spread the maps, so differences are measured on a real range
        model.teacher_std.uniform_(0.5, 2.0)
        x = torch.rand(2, 3, 256, 256)
        st, ae = model.raw_maps(model.normalize(x))
        model.quantiles.copy_(torch.stack([st.quantile(0.9), st.quantile(0.995), ae.quantile(0.9), ae.quantile(0.995)]))
    model.calibrated = True
    scores = model.infer(x).score
    model.threshold = DecisionThreshold(float(scores.mean()), "normal_holdout_fpr", {"target_fpr": 0.01})
    return save_model(model, root / "model.safetensors"), data


def test_variants_against_the_direct_reference(model_and_set, tmp_path):
    model_path, data = model_and_set
    out = tmp_path / "acc.json"
    assert (
        _module().main(
            [str(model_path), str(data), "--variants", "direct", "large_tiles", "small_tiles", "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["reference"] == "direct" and result["images"] == 5 and result["anomalous"] == 3
    variants = result["variants"]
    assert list(variants) == ["direct", "large_tiles", "small_tiles"]
    ref = variants["direct"]
    assert ref["max_map_difference_of_range"] == 0 and ref["max_score_difference"] == 0
    assert ref["decisions_flipped"] == 0 and ref["flipped"] == []
    for name in ("large_tiles", "small_tiles"):
        row = variants[name]
        assert row["options"]["cpu_winograd"] is True and row["dtype"] == "float32"
        assert 0 < row["max_map_difference_of_range"] < 1e-4  # Winograd rounds differently, within the tests' bound
        assert row["decisions_flipped"] == len(row["flipped"])
        for metric in ("image_auroc", "pixel_auroc", "au_pro"):
            assert 0 <= row[metric] <= 1 and abs(row[metric] - ref[metric]) < 0.05


def test_bfloat16_needs_native_instructions_or_the_flag(model_and_set, tmp_path, capsys):
    if cpu_has_native_bf16():
        pytest.skip("this CPU computes bfloat16 natively: the variant is allowed")
    model_path, data = model_and_set
    with pytest.raises(SystemExit):
        _module().main(
            [str(model_path), str(data), "--variants", "direct", "bfloat16", "--out", str(tmp_path / "x.json")]
        )
    assert "--allow-slow-bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_score_that_crosses_the_threshold_is_a_flipped_decision():
    against = _module()._against_reference
    ref_maps, ref_scores = torch.zeros(3, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    ref_maps[0, 0, 0] = 2.0
    maps = ref_maps.clone()
    maps[1, 2, 2] = 0.5
    row = against(maps, torch.tensor([0.1, 0.45, 0.9]), ref_maps, ref_scores, 0.48, ["a", "b", "c"])
    assert row["max_map_difference_of_range"] == pytest.approx(0.25)
    assert row["max_score_difference"] == pytest.approx(0.05)
    assert row["decisions_flipped"] == 1 and row["flipped"][0]["image"] == "b"
    assert "decisions_flipped" not in against(maps, ref_scores, ref_maps, ref_scores, None, ["a", "b", "c"])
