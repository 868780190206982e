"""The anomalib <-> ours converter without anomalib installed: the key layout written out from
anomalib 2.7.0's ``EfficientAdModel`` (read from its torch_model.py), a bit-exact round trip,
the mapping's meaning (an anomalib-style PDN forward on the converted tensors), and errors.
The comparison against anomalib itself is tests/test_peers_anomalib.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from efficientad_ext import EfficientAD, ModelConfig, load_model, save_model
from efficientad_ext.cli import main
from efficientad_ext.formats.anomalib import (
    ConversionError,
    convert_anomalib_file,
    from_anomalib_state_dict,
    save_anomalib_state_dict,
    to_anomalib_state_dict,
)

# anomalib 2.7.0's PDN convolutions: (in, out, kernel, padding when padding=True); the last
# output is the teacher's 384 channels (the student's 768).
ANOMALIB_PDN = {
    "small": [(3, 128, 4, 3), (128, 256, 4, 3), (256, 256, 3, 1), (256, None, 4, 0)],
    "medium": [
        (3, 256, 4, 3),
        (256, 512, 4, 3),
        (512, 512, 1, 0),
        (512, 512, 3, 1),
        (512, None, 4, 0),
        (None, None, 1, 0),
    ],
}


def anomalib_shapes(arch: str, channels: int = 384) -> dict[str, tuple[int, ...]]:
    """Every key and shape of anomalib 2.7.0's ``EfficientAdModel(channels, arch).state_dict()``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for net, out in (("teacher", channels), ("student", 2 * channels)):
        for i, (cin, cout, k, _) in enumerate(ANOMALIB_PDN[arch]):
            cin, cout = cin or out, cout or out
            shapes[f"{net}.conv{i + 1}.weight"] = (cout, cin, k, k)
            shapes[f"{net}.conv{i + 1}.bias"] = (cout,)
    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 64)]):
        k = 8 if i == 5 else 4
        shapes[f"ae.encoder.enconv{i + 1}.weight"] = (cout, cin, k, k)
        shapes[f"ae.encoder.enconv{i + 1}.bias"] = (cout,)
    for i in range(8):
        cout, k = (channels if i == 7 else 64), (3 if i >= 6 else 4)
        shapes[f"ae.decoder.deconv{i + 1}.weight"] = (cout, 64, k, k)
        shapes[f"ae.decoder.deconv{i + 1}.bias"] = (cout,)
    shapes["mean_std.mean"] = shapes["mean_std.std"] = (1, channels, 1, 1)
    for q in ("qa_st", "qb_st", "qa_ae", "qb_ae"):
        shapes[f"quantiles.{q}"] = ()
    return shapes


def random_model(arch="small", padded=False, channels=384) -> EfficientAD:
    model = EfficientAD(ModelConfig(arch=arch, padded=padded, teacher_channels=channels)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # every tensor differs from its neighbours: a swapped key shows
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    model.calibrated = True
    return model


def anomalib_pdn_forward(
    state: dict[str, torch.Tensor], prefix: str, arch: str, padded: bool, x: torch.Tensor
) -> torch.Tensor:
    """anomalib's PDN forward (conv/ReLU/pool order of its torch_model.py) from named tensors."""
    m = 1 if padded else 0
    n = len(ANOMALIB_PDN[arch])
    for i, (_, _, _, pad) in enumerate(ANOMALIB_PDN[arch]):
        x = F.conv2d(x, state[f"{prefix}.conv{i + 1}.weight"], state[f"{prefix}.conv{i + 1}.bias"], padding=pad * m)
        if i < n - 1:
            x = F.relu(x)
        if i < 2:
            x = F.avg_pool2d(x, 2, stride=2, padding=m)
    return x


@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("padded", [False, True])
def test_round_trip_is_bit_exact(arch, padded):
    model = random_model(arch, padded)
    state = to_anomalib_state_dict(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == anomalib_shapes(arch)
    back = from_anomalib_state_dict(state, padded=padded)
    assert back.config == model.config and back.calibrated
    for a, b in zip(model.state_dict().items(), back.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]


def test_other_teacher_channels_and_image_size():
    model = random_model("small", channels=64)
    state = to_anomalib_state_dict(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == anomalib_shapes("small", 64)
    back = from_anomalib_state_dict(state, image_size=(320, 256))
    assert back.config.teacher_channels == 64 and back.config.image_size == (320, 256)


@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("padded", [False, True])
def test_mapping_keeps_each_convolution_in_place(arch, padded):
    # If a key went to the wrong layer (or weight/bias swapped places) the outputs would differ.
    model = random_model(arch, padded)
    state = to_anomalib_state_dict(model)
    x = torch.randn(1, 3, 40, 40)
    for net in ("teacher", "student"):
        expected = getattr(model, net)(x)
        got = anomalib_pdn_forward(state, net, arch, padded, x)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(state["ae.decoder.deconv8.weight"], model.autoencoder.head[2].weight)
    assert torch.equal(state["ae.encoder.enconv6.weight"], model.autoencoder.encoder[10].weight)
    assert torch.equal(state["quantiles.qb_ae"], model.quantiles[3])


def test_unset_anomalib_statistics_give_the_same_identity():
    state = to_anomalib_state_dict(random_model())
    for k in (
        "mean_std.mean",
        "mean_std.std",
        "quantiles.qa_st",
        "quantiles.qb_st",
        "quantiles.qa_ae",
        "quantiles.qb_ae",
    ):
        state[k] = torch.zeros_like(state[k])
    model = from_anomalib_state_dict(state)
    assert not model.calibrated
    assert torch.equal(model.teacher_mean, torch.zeros(384)) and torch.equal(model.teacher_std, torch.ones(384))
    # 0.1 * (m - qa) / (qb - qa) == m: anomalib skips the normalisation while quantiles are unset.
    q = model.quantiles
    m = torch.rand(10)
    torch.testing.assert_close(0.1 * (m - q[0]) / (q[1] - q[0]), m)


def test_lightning_state_dict_and_hyper_parameters(tmp_path):
    model = random_model("medium", padded=True)
    inner = to_anomalib_state_dict(model)
    ckpt = {
        "state_dict": {
            **{f"model.{k}": v for k, v in inner.items()},
            "post_processor.image_threshold": torch.tensor(0.5),
        },
        "hyper_parameters": {"padding": True, "pad_maps": False, "teacher_out_channels": 384},
        "epoch": 3,
    }
    torch.save(ckpt, tmp_path / "model.ckpt")
    back = convert_anomalib_file(tmp_path / "model.ckpt")
    assert back.config.arch == "medium" and back.config.padded
    assert torch.equal(back.student[12].weight, model.student[12].weight)
    with pytest.raises(ConversionError, match="trained with padding=True"):
        convert_anomalib_file(tmp_path / "model.ckpt", padded=False)
    ckpt["hyper_parameters"]["model_size"] = "small"
    torch.save(ckpt, tmp_path / "mislabelled.ckpt")
    with pytest.raises(ConversionError, match="model_size=small, the tensors are a medium model"):
        convert_anomalib_file(tmp_path / "mislabelled.ckpt")


def test_errors_name_the_key(tmp_path):
    good = to_anomalib_state_dict(random_model())
    with pytest.raises(ConversionError, match=r"missing keys \['ae.decoder.deconv3.bias'\]"):
        from_anomalib_state_dict({k: v for k, v in good.items() if k != "ae.decoder.deconv3.bias"})
    with pytest.raises(ConversionError, match=r"unexpected keys \['extra.weight'\]"):
        from_anomalib_state_dict({**good, "extra.weight": torch.zeros(1)})
    bad = dict(good, **{"student.conv3.weight": torch.zeros(256, 256, 4, 4)})
    with pytest.raises(
        ConversionError, match=r"student.conv3.weight has shape \(256, 256, 4, 4\), expected \(256, 256, 3, 3\)"
    ):
        from_anomalib_state_dict(bad)
    with pytest.raises(ConversionError, match="neither conv1..conv4"):
        from_anomalib_state_dict({k.replace("teacher.conv4", "teacher.conv9"): v for k, v in good.items()})
    std = dict(good, **{"mean_std.std": torch.zeros(1, 384, 1, 1) - 1})
    with pytest.raises(ConversionError, match="mean_std.std has entries <= 0"):
        from_anomalib_state_dict(std)
    q = dict(good, **{"quantiles.qb_ae": good["quantiles.qa_ae"].clone()})
    with pytest.raises(ConversionError, match="qa_ae == quantiles.qb_ae"):
        from_anomalib_state_dict(q)
    odd = random_model()
    object.__setattr__(odd.config, "image_mean", (0.5, 0.5, 0.5))
    with pytest.raises(ConversionError, match="ImageNet"):
        to_anomalib_state_dict(odd)
    (tmp_path / "pickled.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConversionError, match="weights-only"):
        convert_anomalib_file(tmp_path / "pickled.pth")


def test_cli_convert_both_ways(tmp_path, capsys):
    model = random_model("small", padded=False)
    save_model(model, tmp_path / "ours.safetensors")
    assert (
        main(["convert", "--from", "ours", str(tmp_path / "ours.safetensors"), "--to", str(tmp_path / "anomalib.pth")])
        == 0
    )
    state = torch.load(tmp_path / "anomalib.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == anomalib_shapes("small")
    assert (
        main(
            [
                "convert",
                "--from",
                "anomalib",
                str(tmp_path / "anomalib.pth"),
                "--to",
                str(tmp_path / "back.safetensors"),
                "--image-size",
                "256",
            ]
        )
        == 0
    )
    assert "EfficientAD-S (unpadded, 256x256, calibrated)" in capsys.readouterr().out
    back = load_model(tmp_path / "back.safetensors")
    for a, b in zip(model.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    save_anomalib_state_dict(model, tmp_path / "anomalib.safetensors")
    assert (
        main(
            [
                "convert",
                "--from",
                "anomalib",
                str(tmp_path / "anomalib.safetensors"),
                "--to",
                str(tmp_path / "b2.safetensors"),
            ]
        )
        == 0
    )
    # a teacher-only file is not a whole model: exit 2 with the reason
    torch.save(
        {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}, tmp_path / "teacher.pth"
    )
    assert (
        main(["convert", "--from", "anomalib", str(tmp_path / "teacher.pth"), "--to", str(tmp_path / "x.safetensors")])
        == 2
    )
    assert "teacher.pth" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
