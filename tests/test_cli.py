"""The `efficientad` command line end to end on a tiny synthetic dataset, and its errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from efficientad_ext.cli import main
from efficientad_ext.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_synthetic_dataset(root / "data", n_train=4, n_test_good=2, n_test_defect=3, seed=1)
    out = root / "run"
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--steps",
                "2",
                "--checkpoint-every",
                "1",
                "--validation-fraction",
                "0.25",
            ]
        )
        == 0
    )
    return data, out


@pytest.mark.slow
def test_train_eval_infer(trained, tmp_path, capsys):
    data, out = trained
    model = out / "model.safetensors"
    assert model.is_file() and (out / "train_state.safetensors").is_file()
    assert json.loads((out / "training.json").read_text())["steps"] == 2

    assert main(["eval", str(model), str(data), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed and "AU-PRO" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 5 and 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["au_pro"] <= 1.0
    assert len(list((tmp_path / "eval" / "images").rglob("*.png"))) == 5

    # infer on a folder with a grayscale, an RGBA and an odd-sized image.
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((300, 280), 120, np.uint8), "L").save(imgs / "gray.png")
    Image.fromarray(np.full((256, 256, 4), 200, np.uint8), "RGBA").save(imgs / "rgba.png")
    Image.fromarray(np.zeros((411, 257, 3), np.uint8)).save(imgs / "odd.jpg")
    assert main(["infer", str(model), str(imgs), "--out", str(tmp_path / "inf")]) == 0
    rows = list(csv.DictReader((tmp_path / "inf" / "scores.csv").open()))
    assert sorted(r["path"].split("/")[-1] for r in rows) == ["gray.png", "odd.jpg", "rgba.png"]
    assert all(np.isfinite(float(r["score"])) for r in rows)
    assert len(list((tmp_path / "inf" / "heatmaps").glob("*.png"))) == 3

    # resume to more steps continues from the saved state
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--steps",
                "3",
                "--checkpoint-every",
                "1",
                "--validation-fraction",
                "0.25",
                "--resume",
            ]
        )
        == 0
    )


def test_errors_are_clear(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "missing" in capsys.readouterr().err
    empty = tmp_path / "empty" / "train" / "good"
    empty.mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    assert main(["train", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"garbage" * 10)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(imgs / "a.png")
    assert main(["infer", str(bad_model), str(imgs), "--out", str(tmp_path / "x")]) == 2
    assert "bad.safetensors is not a readable" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "nope.safetensors"), str(imgs), "--out", str(tmp_path / "x")]) == 2
    assert "model file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(imgs), "--out", str(tmp_path / "o"), "--image-size", "1", "2", "3"])
    assert main(["train", str(imgs), "--out", str(tmp_path / "o"), "--image-size", "128"]) == 2
    assert "image_size must be" in capsys.readouterr().err


@pytest.mark.slow
def test_image_labels_only_set_trains_and_evaluates(trained, tmp_path, capsys):
    """A set laid out as MVTec AD without ground_truth/ (how many factory sets come): train
    accepts it, eval reports the image metrics and says in one line why the pixel ones are not."""
    import shutil

    data, out = trained
    labels_only = tmp_path / "labels_only"
    shutil.copytree(data, labels_only)
    shutil.rmtree(labels_only / "ground_truth")
    assert (
        main(
            ["train", str(labels_only), "--out", str(tmp_path / "run"), "--steps", "1", "--validation-fraction", "0.25"]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["eval", str(out / "model.safetensors"), str(labels_only), "--out", str(tmp_path / "eval"), "--no-images"])
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "image_auroc" in metrics and "pixel_auroc" not in metrics and "au_pro" not in metrics
    assert metrics["pixel_metrics_skipped"].startswith("3 of 3 anomalous test images have no ground-truth mask")
    assert "image AUROC" in printed
    assert [line.split()[:4] for line in printed.splitlines() if line.startswith("pixel metrics")] == [
        ["pixel", "metrics", "skipped:", "3"]
    ]


def test_every_argument_has_help_that_states_its_default():
    """Each command's --help explains every argument, and each option's line gives its
    default (or says it is required)."""
    import argparse

    from efficientad_ext.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in [("efficientad", parser), *sub.choices.items()]:
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.dest}: no help text"
            shown = formatter._get_help_string(action)
            if action.option_strings and not action.required:
                assert "default" in shown, f"{name} {action.option_strings[0]}: the help does not state the default"
    text = sub.choices["infer"].format_help()
    assert "images per forward pass (default: 8)" in text and "model file written by train" in text


@pytest.mark.slow
def test_threshold_from_training_then_calibrated_and_used(trained, tmp_path, capsys):
    """train stores a threshold from the normal hold-out; infer's CSV carries the decision; eval
    reports precision/recall/F1 at it and F1-max; calibrate replaces it by the F1-optimal one."""
    from efficientad_ext import load_model

    data, out = trained
    model = load_model(out / "model.safetensors")
    t = model.threshold
    assert t is not None and t.method == "normal_holdout_fpr" and t.value > 0
    assert t.details["target_fpr"] == 0.01 and t.details["images"] == 1
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(imgs / "a.png")
    assert (
        main(["infer", str(out / "model.safetensors"), str(imgs), "--out", str(tmp_path / "inf"), "--no-images"]) == 0
    )
    rows = list(csv.DictReader((tmp_path / "inf" / "scores.csv").open()))
    assert rows[0]["is_anomalous"] == str(int(float(rows[0]["score"]) > t.value))
    assert float(rows[0]["normalized_score"]) == pytest.approx(0.5 * float(rows[0]["score"]) / t.value, rel=1e-4)
    assert (
        main(["eval", str(out / "model.safetensors"), str(data), "--out", str(tmp_path / "eval"), "--no-images"]) == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["threshold"]["method"] == "normal_holdout_fpr" and set(metrics["at_threshold"]) >= {
        "precision",
        "recall",
        "f1",
    }
    assert 0 < metrics["f1_max"] <= 1 and "F1-max" in capsys.readouterr().out
    calibrated = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", str(out / "model.safetensors"), str(data), "--out", str(calibrated)]) == 0
    assert "F1-optimal on 5 images" in capsys.readouterr().out
    c = load_model(calibrated).threshold
    assert c.method == "f1_labelled" and c.details["f1"] == pytest.approx(metrics["f1_max"])
    assert load_model(out / "model.safetensors").threshold == t  # --out: the original is untouched


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes."),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB\nmore lines of detail"),
        MemoryError(),
    ],
)
def test_an_allocation_failure_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, error):
    from efficientad_ext.cli import score_commands

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(score_commands, "score_folder", fail)
    assert main(["infer", str(tmp_path / "m.safetensors"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("efficientad infer: error: out of memory") and "--batch-size" in err[0]


def test_other_runtime_errors_are_not_hidden(tmp_path, monkeypatch):
    from efficientad_ext.cli import score_commands

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(score_commands, "score_folder", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["infer", str(tmp_path / "m.safetensors"), str(tmp_path), "--out", str(tmp_path / "o")])
