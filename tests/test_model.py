"""EfficientAD model: fused inference equals plain torch.nn; input forms; model files; API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import efficientad_ext
from efficientad_ext import EfficientAD, ModelConfig, ModelFileError, load_model, save_model
from efficientad_ext.formats.teacher_file import TeacherWeightsError, load_teacher_weights


def random_model(arch="small", padded=False, size=(256, 256)) -> EfficientAD:
    torch.manual_seed(0)
    model = EfficientAD(ModelConfig(arch=arch, padded=padded, image_size=size)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    return model


@pytest.mark.parametrize("arch, padded", [("small", False), ("small", True), ("medium", False)])
def test_fused_inference_equals_plain_nn(arch, padded):
    model = random_model(arch, padded)
    images = torch.rand(2, 3, 256, 256)
    got = model.infer(images)
    expected = model.reference_infer(images)
    assert got.anomaly_map.shape == (2, 1, 256, 256) and got.score.shape == (2,)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.score, expected.score, rtol=1e-4, atol=1e-5)


def test_map_at_input_resolution_and_other_model_sizes():
    model = random_model(size=(320, 288))
    assert model.feature_size == model.teacher.output_size(320, 288)
    result = model.infer(torch.rand(1, 3, 400, 500))
    assert result.anomaly_map.shape == (1, 1, 400, 500)


@pytest.mark.parametrize("winograd", [True, False])
def test_infer_each_batches_mixed_sizes_with_infers_values(winograd):
    model = random_model()
    model.inference_options = efficientad_ext.InferenceOptions(cpu_winograd=winograd)
    model.threshold = efficientad_ext.DecisionThreshold(value=1e-4, method="f1_optimal_test", details={})
    from PIL import Image

    images = [torch.rand(3, 301, 257), torch.rand(1, 3, 256, 256), torch.rand(3, 40, 77)]
    pil = Image.fromarray((torch.rand(90, 61, 3) * 255).byte().numpy())
    results = model.infer_each([*images, pil])
    assert [tuple(r.anomaly_map.shape) for r in results] == [(1, 1, 301, 257), (1, 1, 256, 256), (1, 1, 40, 77),
                                                             (1, 1, 90, 61)]  # fmt: skip
    for image, result in zip([*images, pil], results):
        alone = model.infer([image] if isinstance(image, Image.Image) else image.reshape(1, 3, *image.shape[-2:]))
        torch.testing.assert_close(result.anomaly_map, alone.anomaly_map, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result.score, alone.score, rtol=1e-4, atol=1e-7)
        assert result.is_anomalous is not None and bool(result.is_anomalous[0]) == bool(alone.is_anomalous[0])
    with pytest.raises(ValueError, match="at least one image"):
        model.infer_each([])
    with pytest.raises(ValueError, match=r"each image must be one image.*\(2, 3, 64, 64\)"):
        model.infer_each([torch.rand(2, 3, 64, 64)])


def test_input_forms_agree():
    model = random_model()
    u8 = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    ref = model.infer(u8.permute(0, 3, 1, 2).float() / 255)
    for batch in (u8, u8.permute(0, 3, 1, 2), [u8[0].numpy(), u8[1].numpy()]):
        torch.testing.assert_close(model.infer(batch).score, ref.score)
    from PIL import Image

    pil = [Image.fromarray(u8[i].numpy()) for i in range(2)]
    torch.testing.assert_close(efficientad_ext.infer(pil, model=model).score, ref.score)
    # uint8 [B, H, W, 3] where dim 1 cannot be a channel count (an image library's layout)
    hwc = torch.randint(0, 256, (1, 40, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(model.infer(hwc).score, model.infer(hwc.permute(0, 3, 1, 2)).score)
    assert model.infer(hwc).anomaly_map.shape == (1, 1, 40, 64)
    gray = torch.randint(0, 256, (1, 1, 256, 256), dtype=torch.uint8)
    torch.testing.assert_close(model.infer(gray).score, model.infer(gray.expand(1, 3, 256, 256)).score)


@pytest.mark.parametrize(
    "batch, error, match",
    [
        (torch.rand(2, 4, 256, 256), ValueError, "3 \\(RGB\\) or 1 \\(grayscale\\) channels"),
        (torch.rand(256, 256), ValueError, "batch must be"),
        (torch.rand(1, 3, 256, 256) * 255, ValueError, "must be in \\[0, 1\\]"),
        (torch.randint(0, 9, (1, 3, 256, 256)), TypeError, "uint8 .* or floating point"),
        ([], TypeError, "non-empty list"),
        ([np.zeros((256, 256, 3), np.uint8), np.zeros((300, 256, 3), np.uint8)], ValueError, "same size"),
        ("image.png", TypeError, "batch must be a tensor"),
        # a float tensor is [B, C, H, W]: never guessed to be [B, H, W, C] from its shape
        (torch.rand(1, 4, 64, 3), ValueError, "float tensors are read as \\[B, C, H, W\\]"),
        (torch.rand(1, 2, 1, 3), ValueError, "3 \\(RGB\\) or 1 \\(grayscale\\) channels"),
        (torch.rand(1, 3, 32, 256), ValueError, "at least 33x33 pixels .* got 32x256"),
        (torch.randint(0, 256, (1, 20, 64, 3), dtype=torch.uint8), ValueError, "at least 33x33 .* got 20x64"),
        ([np.zeros((8, 8, 3), np.uint8)], ValueError, "batch\\[0\\]: images must be at least 33x33"),
    ],
)
def test_bad_batches(batch, error, match):
    with pytest.raises(error, match=match):
        random_model().infer(batch)


def test_small_images_refused_by_config():
    with pytest.raises(ValueError, match="image_size must be"):
        ModelConfig(image_size=(128, 128))


def test_model_file_round_trip(tmp_path):
    model = random_model("small", True)
    model.calibrated = True
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.calibrated
    images = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(loaded.infer(images).anomaly_map, model.infer(images).anomaly_map)
    efficientad_ext.load(path)
    torch.testing.assert_close(efficientad_ext.infer(images).score, model.infer(images).score)
    # No pickle: the file is plain safetensors with JSON metadata.
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "efficientad_ext.model"


def test_model_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="corrupt.safetensors is not a readable"):
        load_model(bad)
    good = save_model(random_model(), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ModelFileError, match="truncated.safetensors"):
        load_model(truncated)
    from safetensors.torch import load_file, save_file

    tensors = load_file(good)
    save_file(
        tensors,
        tmp_path / "v2.safetensors",
        metadata={"format": "efficientad_ext.model", "format_version": "2", "config": "{}"},
    )
    with pytest.raises(ModelFileError, match="format version 2"):
        load_model(tmp_path / "v2.safetensors")
    save_file(tensors, tmp_path / "other.safetensors", metadata={"format": "something"})
    with pytest.raises(ModelFileError, match="not an efficientad_ext model"):
        load_model(tmp_path / "other.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_model(random_model(), tmp_path / "m.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(random_model("small", True), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_infer_without_model():
    efficientad_ext.api._current = None
    with pytest.raises(RuntimeError, match="call efficientad_ext.load"):
        efficientad_ext.infer(torch.rand(1, 3, 256, 256))


def test_teacher_weights_published_layout(tmp_path):
    # nelson1425/EfficientAD's teacher_small.pth: torch.save of an nn.Sequential state dict.
    source = efficientad_ext.build_pdn("small", 384, padded=False)
    torch.save(source.state_dict(), tmp_path / "teacher_small.pth")
    target = efficientad_ext.build_pdn("small", 384, padded=False)
    load_teacher_weights(target, tmp_path / "teacher_small.pth")
    for a, b in zip(source.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    medium = efficientad_ext.build_pdn("medium", 384)
    with pytest.raises(TeacherWeightsError, match="does not match a medium PDN"):
        load_teacher_weights(medium, tmp_path / "teacher_small.pth")
    wrong = {k: (v[:100] if k == "8.weight" else v) for k, v in source.state_dict().items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(TeacherWeightsError, match="8.weight has shape"):
        load_teacher_weights(target, tmp_path / "wrong.pth")
    (tmp_path / "x.bin").write_bytes(b"abc")
    with pytest.raises(TeacherWeightsError, match="unsupported teacher file type"):
        load_teacher_weights(target, tmp_path / "x.bin")
