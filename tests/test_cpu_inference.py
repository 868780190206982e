"""The CPU inference path (efficientad_ext.inference.cpu_winograd: Winograd convolutions) against the
direct path (oneDNN convolutions, the same weights).

Stated tolerance: features agree to 2e-5 of their magnitude (test_winograd.py); maps and
scores, after the teacher normalisation and quantile scaling, to 1e-4 of the map's range.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from efficientad_ext import InferenceOptions
from efficientad_ext.inference import cpu_winograd
from efficientad_ext.inference.networks import networks_for
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig


def _model(arch: str, padded: bool) -> EfficientAD:
    model = EfficientAD(ModelConfig(arch=arch, padded=padded)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_()
        model.teacher_std.uniform_(0.5, 2.0)
    return model


def _features(model: EfficientAD, x: torch.Tensor):
    nets = networks_for(model, model.dtype)
    return cpu_winograd.plan_for(nets).forward(model.normalize(x), model.feature_size)


@pytest.mark.parametrize(
    "arch, padded, batch",
    [("small", False, 2), ("small", True, 1), pytest.param("medium", False, 1, marks=pytest.mark.slow)],
)
def test_features_maps_and_scores_match_the_direct_path(arch, padded, batch):
    model = _model(arch, padded)
    x = torch.rand(batch, 3, 256, 256)
    with torch.no_grad():
        xn = model.normalize(x)
        expected = (model.teacher(xn), model.student(xn), model.autoencoder(xn, model.feature_size))
    got = _features(model, x)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.is_contiguous(memory_format=torch.channels_last)
        assert ((g - e).abs().max() / e.abs().max()).item() < 2e-5
    # Quantiles that spread the maps over [0, 0.1]: then the map tolerance is meaningful.
    st, ae = model.raw_maps(xn)
    model.quantiles.copy_(torch.stack([st.min(), st.max(), ae.min(), ae.max()]))
    fast = model.infer(x)
    model.inference_options = replace(model.inference_options, cpu_winograd=False)
    direct = model.infer(x)
    span = (direct.anomaly_map.max() - direct.anomaly_map.min()).item()
    assert span > 1e-3
    assert (fast.anomaly_map - direct.anomaly_map).abs().max().item() < 1e-4 * span
    assert (fast.score - direct.score).abs().max().item() < 1e-4 * span


def test_plan_is_rebuilt_when_a_weight_changes():
    model = _model("small", False)
    x = torch.rand(1, 3, 256, 256)
    before = _features(model, x)[1]
    with torch.no_grad():
        model.student[-1].bias.add_(1.0)  # in place: same storage, new version
    after = _features(model, x)[1]
    assert torch.allclose(after, before + 1.0, atol=1e-4)


def test_switch_and_environment_variable(monkeypatch):
    model = _model("small", False)
    cpu = torch.device("cpu")
    assert not cpu_winograd.applies(cpu, torch.float32, InferenceOptions(cpu_winograd=False).cpu_winograd)
    monkeypatch.setenv("EFFICIENTAD_CPU_WINOGRAD", "0")
    assert not InferenceOptions().cpu_winograd  # the environment gives the default
    assert not EfficientAD(ModelConfig()).inference_options.cpu_winograd
    monkeypatch.setenv("EFFICIENTAD_CPU_WINOGRAD", "1")
    assert InferenceOptions().cpu_winograd
    assert cpu_winograd.applies(cpu, torch.float32, True)
    assert not cpu_winograd.applies(cpu, torch.float16, True)
    model.inference_options = InferenceOptions(cpu_winograd=False)
    assert model.infer(torch.rand(1, 3, 256, 256)).anomaly_map.shape == (1, 1, 256, 256)


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_warns_once(monkeypatch):
    monkeypatch.setattr(cpu_winograd, "_bf16_warned", False)
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if supported is None or supported():
        pytest.skip("this CPU runs bfloat16 convolutions natively")
    with pytest.warns(RuntimeWarning, match="bfloat16"):
        cpu_winograd.applies(torch.device("cpu"), torch.bfloat16, True)
    assert cpu_winograd._bf16_warned


def test_both_tile_sets_match_the_direct_path_and_the_plan_follows_the_option():
    model = _model("small", False)
    x = torch.rand(1, 3, 256, 256)
    nets = networks_for(model, model.dtype)
    with torch.no_grad():
        xn = model.normalize(x)
        expected = (model.teacher(xn), model.student(xn), model.autoencoder(xn, model.feature_size))
        large = cpu_winograd.plan_for(nets, "large")
        assert large.tiles == "large" and large.teacher[0].wino.output_tf.shape == (5, 8)
        got_large = large.forward(xn, model.feature_size)
        small = cpu_winograd.plan_for(nets, "small")  # another tile set: a new plan
        assert small is not large and small.teacher[0].wino.output_tf.shape == (3, 6)
        assert cpu_winograd.plan_for(nets, "small") is small  # the same set: the cached one
        got_small = small.forward(xn, model.feature_size)
    for g_l, g_s, e in zip(got_large, got_small, expected):
        assert ((g_l - e).abs().max() / e.abs().max()).item() < 2e-5
        assert ((g_s - e).abs().max() / e.abs().max()).item() < 2e-5
    with pytest.raises(ValueError, match="tiles must be one of"):
        cpu_winograd.plan_for(nets, "huge")
    # Through infer: the option picks the plan.
    model.inference_options = replace(model.inference_options, cpu_winograd_tiles="small")
    model.infer(x)
    assert nets.cpu_plan.tiles == "small"


def test_tile_option_and_its_environment_variable(monkeypatch):
    assert InferenceOptions().cpu_winograd_tiles == "large"
    monkeypatch.setenv("EFFICIENTAD_CPU_WINOGRAD_TILES", "small")
    assert InferenceOptions().cpu_winograd_tiles == "small"
    monkeypatch.setenv("EFFICIENTAD_CPU_WINOGRAD_TILES", "tiny")
    with pytest.raises(ValueError, match="EFFICIENTAD_CPU_WINOGRAD_TILES must be one of"):
        InferenceOptions()
    monkeypatch.delenv("EFFICIENTAD_CPU_WINOGRAD_TILES")
    with pytest.raises(ValueError, match="cpu_winograd_tiles must be one of"):
        InferenceOptions(cpu_winograd_tiles="tiny")
