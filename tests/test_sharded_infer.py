"""Sharded scoring (issue 17) with 2 gloo processes: the merged scores.csv equals the
one-process file, corrupt images are listed, a re-run scores only what is new."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from distributed_launch import torchrun
from efficientad_ext import DecisionThreshold, EfficientAD, save_model
from efficientad_ext.cli import main
from efficientad_ext.inference.sharded import read_shards, sharded_infer
from test_train import write_images


@pytest.fixture()
def folder(tmp_path):
    torch.manual_seed(0)
    model = EfficientAD()
    model.quantiles.copy_(torch.tensor([0.0, 0.5, 0.0, 0.3]))  # a scale, so that maps and scores vary (and stay > 0)
    save_model(model, tmp_path / "model.safetensors")
    images = tmp_path / "images"
    write_images(images, 4, seed=2)
    Image.fromarray(np.full((300, 280), 90, np.uint8), "L").save(images / "gray.png")
    (images / "broken.png").write_bytes(b"not an image")
    # A decision threshold between the images' scores: scores.csv then has both decisions.
    assert (
        main(
            [
                "infer",
                str(tmp_path / "model.safetensors"),
                str(images),
                "--out",
                str(tmp_path / "probe"),
                "--skip-corrupt",
                "--no-images",
            ]
        )
        == 0
    )
    scores = sorted(float(r["score"]) for r in csv.DictReader((tmp_path / "probe" / "scores.csv").open()))
    model.threshold = DecisionThreshold(0.5 * (scores[2] + scores[3]), "normal_holdout_fpr", {"target_fpr": 0.01})
    save_model(model, tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors", images


def _rows(path):
    return list(csv.reader(path.open(newline="")))


@pytest.mark.slow
def test_two_ranks_merge_the_one_process_csv_and_resume(folder, tmp_path):
    model, images = folder
    assert main(["infer", str(model), str(images), "--out", str(tmp_path / "one"), "--skip-corrupt"]) == 0
    job = torchrun(
        [
            "-m",
            "efficientad_ext",
            "infer",
            str(model),
            str(images),
            "--out",
            str(tmp_path / "two"),
            "--workers",
            "1",
            "--batch-size",
            "2",
        ],
        timeout=600,
    )
    assert "5 images scored (0 already scored before this run, 1 corrupt" in job.stdout
    assert (tmp_path / "two" / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()
    corrupt = _rows(tmp_path / "two" / "corrupt.csv")
    assert corrupt[0] == ["path", "error"] and [r[0].split("/")[-1] for r in corrupt[1:]] == ["broken.png"]
    one_png, two_png = (
        sorted((tmp_path / "one" / "heatmaps").glob("*.png")),
        sorted((tmp_path / "two" / "heatmaps").glob("*.png")),
    )
    assert [p.name for p in one_png] == [p.name for p in two_png] and len(two_png) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one_png, two_png))
    # Both ranks scored a share: their shard files hold disjoint paths, together all 6.
    shards = sorted((tmp_path / "two" / "shards").glob("rank*.csv"))
    by_rank = {}
    for f in shards:
        by_rank.setdefault(f.name[:9], set()).update(r["path"] for r in csv.DictReader(f.open()))
    assert len(by_rank) == 2 and not set.intersection(*by_rank.values()) and len(set.union(*by_rank.values())) == 6

    # A re-run (a preempted job started again) skips what is done and scores only the new image.
    write_images(tmp_path / "extra", 1, seed=9)[0].rename(images / "zzz.png")
    job = torchrun(
        [
            "-m",
            "efficientad_ext",
            "infer",
            str(model),
            str(images),
            "--out",
            str(tmp_path / "two"),
            "--workers",
            "1",
            "--no-images",
        ],
        timeout=600,
    )
    assert "6 images scored (6 already scored before this run, 1 corrupt" in job.stdout
    rows = _rows(tmp_path / "two" / "scores.csv")
    assert rows[:-1] == _rows(tmp_path / "one" / "scores.csv") and rows[-1][0].endswith("zzz.png")


def test_one_process_resumes_and_lists_corrupt(folder, tmp_path):
    model, images = folder
    out = tmp_path / "out"
    first = sharded_infer(model, images, out, workers=0, batch_size=2, write_images=False, chunk_size=2)
    assert (first.images, first.scored, first.corrupt, first.skipped, first.scored_this_run) == (6, 5, 1, 0, 6)
    # The one-process infer's columns, decisions included, from the shards' exact scores.
    assert (
        main(["infer", str(model), str(images), "--out", str(tmp_path / "one"), "--skip-corrupt", "--no-images"]) == 0
    )
    assert (out / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()
    rows = _rows(out / "scores.csv")
    assert rows[0] == ["path", "score", "is_anomalous", "normalized_score"]
    assert sorted(r[2] for r in rows[1:]) == ["0", "0", "0", "1", "1"]
    assert len(list((out / "shards").glob("rank*.csv"))) == 3  # chunks of 2 images, each its own file
    again = sharded_infer(model, images, out, workers=0, write_images=False)
    assert (again.scored, again.skipped, again.scored_this_run) == (5, 6, 0)
    # A lost chunk (a job killed before writing it) is scored again, and only that.
    lost = sorted((out / "shards").glob("rank*.csv"))[0]
    lost_paths = {r["path"] for r in csv.DictReader(lost.open())}
    lost.unlink()
    before = (out / "scores.csv").read_text()
    third = sharded_infer(model, images, out, workers=0, write_images=False)
    assert third.scored_this_run == 2 and set(read_shards(out)) >= lost_paths
    assert (out / "scores.csv").read_text() == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sharded_infer(model, tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        sharded_infer(model, tmp_path / "empty", out)
