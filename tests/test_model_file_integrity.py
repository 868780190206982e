"""Model files that cannot lie: the integrity digest, typed metadata, validated values; the
same digest on training states and teacher files; the CLI's one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import efficientad_ext
from corruption_probe import tiny_model
from efficientad_ext import ModelFileError, load_model, save_model
from efficientad_ext.cli import main
from efficientad_ext.formats import integrity
from efficientad_ext.formats.integrity import UnverifiedFileWarning
from efficientad_ext.formats.teacher_file import TeacherWeightsError, load_teacher_weights
from efficientad_ext.models.pdn import build_pdn

small_model = tiny_model  # the same tiny calibrated model the corruption probe uses


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(path: Path, tensors, metadata, digest: str) -> Path:
    """Writes a variant: ``digest`` "keep" (the stored one, now stale), "sign" (recomputed, as
    a buggy writer would) or "drop" (a file from before digests)."""
    metadata = dict(metadata)
    if digest == "sign":
        metadata = integrity.with_digest(tensors, metadata)
    elif digest == "drop":
        metadata.pop(integrity.DIGEST_KEY, None)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(small_model(), tmp_path_factory.mktemp("m") / "model.safetensors")


def test_digest_is_stored_and_covers_data_and_metadata(model_file, tmp_path):
    tensors, metadata = read(model_file)
    assert metadata["digest"].startswith("sha256-v1:") and len(metadata["digest"]) == 10 + 64
    assert integrity.compute_digest(tensors, metadata) == metadata["digest"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a signed file loads without any warning
        load_model(model_file)
    # One bit in one weight: refused, naming the file.
    flipped = {k: v.clone() for k, v in tensors.items()}
    flipped["student.0.weight"].view(torch.int32).view(-1)[5] ^= 1 << 3
    with pytest.raises(ModelFileError, match=r"bad\.safetensors is corrupt: .*integrity digest"):
        load_model(rewrite(tmp_path / "bad.safetensors", flipped, metadata, "keep"))
    # A metadata edit that would pass every range check is refused too.
    record = json.loads(metadata["training"])
    record["teacher"] = "something else"
    with pytest.raises(ModelFileError, match="integrity digest"):
        load_model(
            rewrite(tmp_path / "meta.safetensors", tensors, {**metadata, "training": json.dumps(record)}, "keep")
        )
    with pytest.raises(ModelFileError, match="'digest' must be 'sha256-v1:'"):
        load_model(rewrite(tmp_path / "malformed.safetensors", tensors, {**metadata, "digest": "md5:00"}, "keep"))


def test_a_file_without_digest_is_refused_unless_allowed(model_file, tmp_path):
    tensors, metadata = read(model_file)
    old = rewrite(tmp_path / "old.safetensors", tensors, metadata, "drop")
    with pytest.raises(ModelFileError, match="old.safetensors has no integrity digest.*allow_unverified=True"):
        load_model(old)
    with pytest.raises(ModelFileError, match="no integrity digest"):
        efficientad_ext.load(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(old, allow_unverified=True)
    assert [type(w.message) for w in caught] == [UnverifiedFileWarning]
    assert "old.safetensors has no integrity digest" in str(caught[0].message)
    images = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(model.infer(images).score, load_model(model_file).infer(images).score, rtol=0, atol=0)


def test_the_cli_refuses_a_file_without_digest_in_one_line(model_file, tmp_path, capsys):
    tensors, metadata = read(model_file)
    old = rewrite(tmp_path / "old.safetensors", tensors, metadata, "drop")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "a.png")
    assert main(["infer", str(old), str(images), "--out", str(tmp_path / "out"), "--no-images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old.safetensors has no integrity digest" in err[0] and "--allow-unverified" in err[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        args = ["infer", str(old), str(images), "--out", str(tmp_path / "out"), "--no-images", "--allow-unverified"]
        assert main(args) == 0
    assert (tmp_path / "out" / "scores.csv").is_file()


BAD_METADATA = [
    # (field, new JSON text or a function of the parsed config, expected message)
    ("padded", "no", r"config\.padded must be true or false, got 'no'"),
    ("image_size", [256.7, 256], r"config\.image_size\[0\] must be an integer in \[256, 4096\], got 256\.7"),
    ("teacher_channels", -1, r"config\.teacher_channels must be an integer in \[1, 4096\], got -1"),
    ("teacher_channels", 10**12, r"config\.teacher_channels must be an integer in \[1, 4096\], got 1000000000000"),
    ("teacher_channels", "x", r"config\.teacher_channels must be an integer .*got 'x'"),
    ("teacher_channels", True, r"config\.teacher_channels must be an integer .*got True"),
    ("image_mean", [0.5, 0.5], r"config\.image_mean must be a list of 3 numbers"),
    (
        "image_std",
        [0.2, 0.0, 0.2],
        r"config\.image_std values must be finite and in \[0\.001, 1000\], got \[0\.2, 0\.0, 0\.2\]",
    ),
    ("arch", "large", r"config\.arch must be one of \['small', 'medium'\], got 'large'"),
]


@pytest.mark.parametrize("digest", ["sign", "drop"])
@pytest.mark.parametrize("field, value, message", BAD_METADATA)
def test_metadata_fields_are_typed_and_ranged(model_file, tmp_path, field, value, message, digest):
    tensors, metadata = read(model_file)
    config = json.loads(metadata["config"])
    config[field] = value
    path = rewrite(tmp_path / "m.safetensors", tensors, {**metadata, "config": json.dumps(config)}, digest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        with pytest.raises(ModelFileError, match=message):
            load_model(path, allow_unverified=True)


@pytest.mark.parametrize(
    "key, text, message",
    [
        ("calibrated", "NaN", r"'calibrated' is not valid JSON"),
        ("calibrated", '"yes"', r"'calibrated' must be true or false, got 'yes'"),
        ("config", "[]", r"'config' must be a JSON object, got \[\]"),
        ("config", "[" * 100000, r"'config' is not valid JSON"),
        ("training", '{"steps": -1}', r"training\.steps must be an integer in \[0, "),
        ("training", '{"teacher": 3}', r"training\.teacher must be a string, got 3"),
        ("extra_key", "1", r"unknown metadata fields 'extra_key' \(known"),
    ],
)
def test_other_metadata_fields(model_file, tmp_path, key, text, message):
    tensors, metadata = read(model_file)
    path = rewrite(tmp_path / "m.safetensors", tensors, {**metadata, key: text}, "sign")
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def _set(name, index, value):
    def edit(tensors):
        tensors[name].view(-1)[index] = value

    return edit


BAD_VALUES = [
    (_set("quantiles", 1, float("nan")), r"tensor quantiles holds 1 non-finite values \(first at flat index 1: nan\)"),
    (_set("quantiles", 3, float("inf")), r"tensor quantiles holds 1 non-finite values"),
    (_set("quantiles", 0, 0.05), r"tensor quantiles: q_st_a = 0\.05 must be below q_st_b = 0\.05"),
    (_set("quantiles", 2, 0.5), r"tensor quantiles: q_ae_a = 0\.5 must be below q_ae_b = 0\.06"),
    (_set("teacher_std", 3, 0.0), r"tensor teacher_std\[3\] is 0; the teacher's channel std must be > 0"),
    (_set("teacher_std", 0, -1.0), r"tensor teacher_std\[0\] is -1"),
    (_set("teacher_mean", 2, float("nan")), r"tensor teacher_mean holds 1 non-finite values"),
    (
        _set("student.0.weight", 7, float("-inf")),
        r"tensor student\.0\.weight holds 1 non-finite values \(first at flat index 7: -inf\)",
    ),
    (_set("autoencoder.encoder.0.bias", 0, float("nan")), r"tensor autoencoder\.encoder\.0\.bias holds 1 non-finite"),
]


@pytest.mark.parametrize("edit, message", BAD_VALUES)
def test_values_that_cannot_work_are_refused(model_file, tmp_path, edit, message):
    tensors, metadata = read(model_file)
    edit(tensors)
    with pytest.raises(ModelFileError, match=r"m\.safetensors: " + message):
        load_model(rewrite(tmp_path / "m.safetensors", tensors, metadata, "sign"))


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = small_model()
    model.teacher_std[0] = 0.0
    with pytest.raises(ValueError, match=r"cannot save the model to .*teacher_std\[0\] is 0"):
        save_model(model, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


def test_the_cli_prints_one_line_and_exits_2(model_file, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(imgs / "a.png")
    tensors, metadata = read(model_file)
    config = json.loads(metadata["config"])
    config["teacher_channels"] = 10**12
    bad = rewrite(tmp_path / "bad.safetensors", tensors, {**metadata, "config": json.dumps(config)}, "sign")
    assert main(["infer", str(bad), str(imgs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("efficientad infer: error: ") and "teacher_channels" in err


def test_training_state_and_teacher_files_carry_the_digest(tmp_path):
    from efficientad_ext.distillation import DistillRecord
    from efficientad_ext.formats.teacher_file import save_teacher
    from efficientad_ext.training import TrainConfig, TrainStep
    from efficientad_ext.training.run_setup import load_train_state as _load_state
    from efficientad_ext.training.run_setup import save_train_state as _save_state

    # Teacher file written by distill.
    pdn = build_pdn("small", 8)
    record = DistillRecord(config={}, images="x", train_images=1, holdout_images=0)
    path = save_teacher(pdn, tmp_path / "teacher.safetensors", record)
    target = build_pdn("small", 8)
    load_teacher_weights(target, path)
    tensors, metadata = read(path)
    tensors["3.weight"].view(-1)[0] += 1.0
    with pytest.raises(TeacherWeightsError, match="bad_teacher.safetensors is corrupt"):
        load_teacher_weights(target, rewrite(tmp_path / "bad_teacher.safetensors", tensors, metadata, "keep"))
    with pytest.warns(UnverifiedFileWarning):
        load_teacher_weights(target, rewrite(tmp_path / "old_teacher.safetensors", tensors, metadata, "drop"))
    # A teacher from another tool (no format of ours): no digest expected, no warning.
    save_file({k: v for k, v in tensors.items()}, str(tmp_path / "plain.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_teacher_weights(target, tmp_path / "plain.safetensors")

    # Training state.
    model = small_model()
    stepper = TrainStep(model, TrainConfig(steps=2), torch.Generator().manual_seed(0))
    state = tmp_path / "train_state.safetensors"
    _save_state(state, model, stepper, 1, {"k": 1})
    assert _load_state(state, small_model(), TrainStep(small_model(), TrainConfig(steps=2), torch.Generator()))[0] == 1
    tensors, metadata = read(state)
    tensors["model.student.0.bias"].view(-1)[0] += 1e-3
    rewrite(state, tensors, metadata, "keep")
    with pytest.raises(ModelFileError, match="train_state.safetensors is corrupt"):
        _load_state(state, small_model(), TrainStep(small_model(), TrainConfig(steps=2), torch.Generator()))
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="not a readable training state"):
        _load_state(state, small_model(), TrainStep(small_model(), TrainConfig(steps=2), torch.Generator()))
