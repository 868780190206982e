"""The decision threshold (issue 15, item 2): how it is chosen, stored and applied."""

from __future__ import annotations

import itertools
import json
import pickle

import pytest
import torch

from efficientad_ext import DecisionThreshold, EfficientAD, InferenceResult
from efficientad_ext.evaluation.threshold import decision_metrics, f1_max, f1_optimal_threshold, threshold_at_fpr
from efficientad_ext.formats.model_file import ModelFileError, load_model, save_model
from efficientad_ext.inference.result import normalize_score


def test_threshold_at_fpr_is_the_normal_scores_quantile():
    scores = torch.linspace(0.01, 1.0, 100)
    t = threshold_at_fpr(scores, 0.05)
    assert t.method == "normal_holdout_fpr" and t.value == pytest.approx(float(torch.quantile(scores.double(), 0.95)))
    assert t.details == {"target_fpr": 0.05, "images": 100, "holdout_fpr": pytest.approx(0.05)}
    with pytest.raises(ValueError, match="target_fpr must be in"):
        threshold_at_fpr(scores, 0.0)
    with pytest.raises(ValueError, match="not above 0"):
        threshold_at_fpr(-scores, 0.05)
    with pytest.raises(ValueError, match="non-finite"):
        threshold_at_fpr(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([])


def _f1_brute_force(scores, labels):
    best = 0.0
    for t in sorted(set(scores)) + [min(scores) - 1]:
        best = max(best, decision_metrics(scores, labels, t)["f1"])
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_equals_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(40, generator=g) < 0.4).long()
    labels[0], labels[1] = 0, 1
    scores = (torch.rand(40, generator=g) + 0.5 * labels).mul(20).round().div(20)  # ties on purpose
    f1, threshold = f1_max(scores, labels)
    assert f1 == pytest.approx(_f1_brute_force(scores.tolist(), labels.tolist()))
    assert decision_metrics(scores, labels, threshold)["f1"] == pytest.approx(f1)  # the threshold achieves it
    t = f1_optimal_threshold(scores + 1.0, labels)
    assert t.method == "f1_labelled" and t.details["images"] == 40 and t.details["f1"] == pytest.approx(f1)


def test_decisions_count_nan_as_anomalous_and_normalise_at_one_half():
    m = decision_metrics(torch.tensor([0.1, 0.9, float("nan"), 0.2]), [0, 1, 1, 1], 0.5)
    assert (m["precision"], m["recall"], m["false_negatives"]) == (1.0, pytest.approx(2 / 3), 1)
    r = InferenceResult(torch.zeros(3, 1, 4, 4), torch.tensor([0.2, 0.8, float("nan")]), 0.4)
    assert r.is_anomalous.tolist() == [False, True, True]
    torch.testing.assert_close(r.normalized_score[:2], torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(normalize_score(torch.tensor([0.4]), 0.4), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        normalize_score(torch.tensor([0.4]), 0.0)


def test_inference_result_unpacks_as_a_pair_and_keeps_its_threshold():
    amap, score = torch.rand(2, 1, 4, 4), torch.tensor([0.1, 0.7])
    r = InferenceResult(amap, score, 0.5)
    m, s = r
    assert m is amap and s is score and r.anomaly_map is amap and r.score is score and len(r) == 2
    copy = pickle.loads(pickle.dumps(r))
    assert copy.threshold == 0.5 and copy.is_anomalous.tolist() == [False, True]
    plain = InferenceResult(amap, score)
    assert plain.is_anomalous is None and plain.normalized_score is None


def test_model_file_stores_the_threshold_and_refuses_bad_ones(tmp_path):
    model = EfficientAD()
    model.threshold = DecisionThreshold(0.37, "normal_holdout_fpr", {"target_fpr": 0.01, "images": 76})
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.threshold == model.threshold
    x = torch.rand(1, 3, 256, 256)
    r = loaded.infer(x)
    assert r.threshold == 0.37 and r.is_anomalous.tolist() == [bool(r.score[0] > 0.37)]
    for bad, match in (
        (DecisionThreshold(0.0, "normal_holdout_fpr"), "threshold.value must be a finite number > 0"),
        (DecisionThreshold(0.3, "guess"), "threshold.method must be one of"),
        (DecisionThreshold(0.3, "f1_labelled", {"f1": float("nan")}), "threshold. is not valid JSON .NaN"),
        (
            DecisionThreshold(0.3, "f1_labelled", {"f1": "good"}),
            "threshold.details must be an object of finite numbers",
        ),
    ):
        model.threshold = bad
        with pytest.raises(ValueError, match=match):
            save_model(model, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    # A file without a threshold (written before thresholds existed) loads without one.
    model.threshold = None
    assert load_model(save_model(model, tmp_path / "none.safetensors")).threshold is None


def test_corrupt_threshold_metadata_is_named(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from efficientad_ext.formats import integrity

    model = EfficientAD()
    model.threshold = DecisionThreshold(0.37, "normal_holdout_fpr", {})
    path = save_model(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    metadata["threshold"] = json.dumps({"value": "high", "method": "f1_labelled", "details": {}})
    metadata.pop("digest")
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=integrity.with_digest(tensors, metadata))
    with pytest.raises(ModelFileError, match="threshold.value must be a finite number > 0, got 'high'"):
        load_model(tmp_path / "bad.safetensors")


def test_every_combination_of_labels_is_handled():
    for labels in itertools.product([0, 1], repeat=3):
        scores = [0.1, 0.2, 0.3]
        if len(set(labels)) < 2:
            with pytest.raises(ValueError, match="normal and anomalous"):
                f1_max(scores, labels)
        else:
            assert 0.0 < f1_max(scores, labels)[0] <= 1.0
