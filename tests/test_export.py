"""Export of Algorithm 2 (issue 15, item 3): the ONNX file run in onnxruntime and the OpenVINO
IR run in OpenVINO give infer's maps and scores (float32 within 1e-4 of the map range), with a
dynamic batch, and the decision when the model has a threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficientad_ext import DecisionThreshold, EfficientAD, export
from efficientad_ext.cli import main
from efficientad_ext.formats.model_file import save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = EfficientAD().eval()
    with torch.no_grad():  # a plausible calibrated state
        model.teacher_mean.uniform_(-0.5, 0.5)
        model.teacher_std.uniform_(0.5, 2.0)
        x = torch.rand(2, 3, 256, 256)
        st, ae = model.raw_maps(model.normalize(x))
        model.quantiles.copy_(torch.stack([st.quantile(0.9), st.quantile(0.995), ae.quantile(0.9), ae.quantile(0.995)]))
    model.calibrated = True
    model.threshold = DecisionThreshold(float(model.infer(x).score.mean()), "normal_holdout_fpr", {"target_fpr": 0.01})
    return model, save_model(model, tmp_path_factory.mktemp("export") / "model.safetensors")


def _check(model, anomaly_map, score, is_anomalous, x, map_tol, score_tol):
    ref = model.infer(x, dtype=torch.float32)
    span = float(ref.anomaly_map.max() - ref.anomaly_map.min())
    assert anomaly_map.shape == tuple(ref.anomaly_map.shape) and score.shape == tuple(ref.score.shape)
    assert np.abs(anomaly_map.astype(np.float64) - ref.anomaly_map.double().numpy()).max() <= map_tol * span
    assert np.abs(score.astype(np.float64) - ref.score.double().numpy()).max() <= score_tol * span
    np.testing.assert_array_equal(is_anomalous, ref.is_anomalous.numpy())


@pytest.mark.slow
def test_onnx_in_onnxruntime_equals_infer_with_a_dynamic_batch(model_file, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, path = model_file
    (onnx_path,) = export(path, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score", "is_anomalous"]
    for batch in (1, 3):  # one file, any batch size
        x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch))
        anomaly_map, score, is_anomalous = session.run(None, {"images": x.numpy()})
        _check(model, anomaly_map, score, is_anomalous, x, 1e-4, 1e-4)


@pytest.mark.slow
def test_openvino_ir_equals_infer(model_file, tmp_path):
    ov = pytest.importorskip("openvino")
    model, path = model_file
    written = export(path, tmp_path / "model", format="openvino")
    assert sorted(p.suffix for p in written) == [".bin", ".xml"]
    compiled = ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    out = compiled(x.numpy())
    _check(model, out[0], out[1], out[2], x, 1e-4, 1e-4)


@pytest.mark.slow
def test_float16_onnx_and_the_cli(model_file, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    model, path = model_file
    assert main(["export", str(path), "--dtype", "float16", "--out", str(tmp_path / "half.onnx")]) == 0
    assert str(tmp_path / "half.onnx") in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "half.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(7))
    assert session.get_inputs()[0].type == "tensor(float16)"
    anomaly_map, score, _ = session.run(None, {"images": x.half().numpy()})
    assert anomaly_map.dtype == np.float32  # the networks in float16, the maps accumulated in float32 (as infer)
    # float16 end to end: a few percent of the map range (the networks' half-precision rounding).
    ref = model.infer(x, dtype=torch.float32)
    span = float(ref.anomaly_map.max() - ref.anomaly_map.min())
    assert np.abs(anomaly_map.astype(np.float64) - ref.anomaly_map.double().numpy()).max() <= 0.05 * span


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="not calibrated"):
        export(EfficientAD(), tmp_path / "m.onnx")
    model = EfficientAD()
    model.calibrated = True
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="dtype must be one of"):
        export(model, tmp_path / "m.onnx", dtype="int8")
    assert not list(tmp_path.iterdir())
