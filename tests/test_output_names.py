"""Input and output names: images with the same stem (``000.png`` beside ``000.jpg``) get
their own heatmaps in ``infer`` and ``eval``; symbolic links that lead to no file are warned
about and counted, never silently dropped."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from efficientad_ext import EfficientAD, save_model
from efficientad_ext.api import evaluate, score_folder
from efficientad_ext.data import broken_links, list_images
from efficientad_ext.evaluation.visualize import heatmap_name


def _image(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((64, 64, 3), value, np.uint8)
    pixels[10:20, 10:20] = 255 - value  # each image different, so a collision would show
    Image.fromarray(pixels).save(path)


def test_heatmap_name_keeps_the_extension():
    assert heatmap_name("/a/b/000.jpg") == "000.jpg.png"
    assert heatmap_name("000.png") == "000.png.png"
    assert heatmap_name("/a/b/000.png") != heatmap_name("/a/b/000.jpg")


def test_infer_writes_one_heatmap_per_image_with_the_same_stem(tmp_path):
    model = save_model(EfficientAD(), tmp_path / "m.safetensors")
    images = tmp_path / "images"
    _image(images / "000.png", 40)
    _image(images / "000.jpg", 200)
    _image(images / "001.bmp", 120)
    assert score_folder(model, images, tmp_path / "out", device="cpu") == 3
    written = sorted(p.name for p in (tmp_path / "out" / "heatmaps").glob("*.png"))
    assert written == ["000.jpg.png", "000.png.png", "001.bmp.png"]
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    a = np.asarray(Image.open(tmp_path / "out" / "heatmaps" / "000.png.png"))
    b = np.asarray(Image.open(tmp_path / "out" / "heatmaps" / "000.jpg.png"))
    assert not np.array_equal(a, b)


def test_eval_writes_one_heatmap_per_test_image_with_the_same_stem(tmp_path):
    model = EfficientAD()
    root = tmp_path / "set"
    _image(root / "train" / "good" / "000.png", 90)
    _image(root / "test" / "good" / "000.png", 40)
    _image(root / "test" / "good" / "000.jpg", 200)
    _image(root / "test" / "crack" / "000.png", 10)
    _image(root / "test" / "crack" / "000.jpg", 250)
    result = evaluate(model, root, tmp_path / "eval", device="cpu")
    assert result["images"] == 4
    for kind in ("good", "crack"):
        written = sorted(p.name for p in (tmp_path / "eval" / "images" / kind).glob("*.png"))
        assert written == ["000.jpg.png", "000.png.png"]


def test_broken_symlinks_are_warned_about_and_counted(tmp_path):
    model = save_model(EfficientAD(), tmp_path / "m.safetensors")
    images = tmp_path / "images"
    _image(images / "a.png", 40)
    os.symlink(images / "a.png", images / "good_link.png")  # a working link is an image like any other
    os.symlink(tmp_path / "missing.png", images / "dangling.png")
    os.symlink(images / "loop2.png", images / "loop1.png")
    os.symlink(images / "loop1.png", images / "loop2.png")
    assert [p.name for p in broken_links(images)] == ["dangling.png", "loop1.png", "loop2.png"]
    with pytest.warns(UserWarning, match=r"skipping 3 symbolic link\(s\) in .*dangling\.png"):
        assert [p.name for p in list_images(images)] == ["a.png", "good_link.png"]
    with pytest.warns(UserWarning, match="symbolic link"):
        assert score_folder(model, images, tmp_path / "out", device="cpu") == 2
    counts = json.loads((tmp_path / "out" / "run.json").read_text())["counts"]
    assert counts["broken_links"] == 3 and counts["scored"] == 2


def test_eval_counts_broken_symlinks_in_run_json(tmp_path):
    from efficientad_ext.cli import main

    model = save_model(EfficientAD(), tmp_path / "m.safetensors")
    root = tmp_path / "set"
    _image(root / "train" / "good" / "000.png", 90)
    _image(root / "test" / "good" / "000.png", 40)
    _image(root / "test" / "crack" / "000.png", 10)
    os.symlink(tmp_path / "gone.png", root / "test" / "crack" / "001.png")
    with pytest.warns(UserWarning, match="symbolic link"):
        assert main(["eval", str(model), str(root), "--out", str(tmp_path / "eval"), "--no-images"]) == 0
    counts = json.loads((tmp_path / "eval" / "run.json").read_text())["counts"]
    assert counts == {"images": 2, "anomalous": 1, "broken_links": 1}
