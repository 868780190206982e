"""Many models (issue 17): every category of an MVTec-style root, one model per rank, a summary."""

from __future__ import annotations

import csv
import json

import pytest

from distributed_launch import torchrun
from efficientad_ext.data.synthetic import make_synthetic_dataset
from efficientad_ext.training.many_models import assign, find_categories, format_table, train_all


def test_assignment_is_balanced_and_deterministic():
    assert assign([10, 50, 20, 30, 40], 2) == [[1, 2, 0], [4, 3]]  # loads 80 and 70
    assert assign([5, 5, 5], 4) == [[0], [1], [2], []]
    assert assign([3, 1], 1) == [[0, 1]]


def test_categories_failures_and_skips(tmp_path):
    root = tmp_path / "root"
    (root / "b_empty" / "train" / "good").mkdir(parents=True)  # no images: this category fails
    (root / "a_done" / "train" / "good").mkdir(parents=True)
    (root / "notes").mkdir()  # not a category
    assert [c.name for c in find_categories(root)] == ["a_done", "b_empty"]
    done = {"category": "a_done", "status": "ok", "rank": 0, "device": "cpu", "train_images": 3, "image_auroc": 0.75}
    (tmp_path / "out" / "a_done").mkdir(parents=True)
    (tmp_path / "out" / "a_done" / "result.json").write_text(json.dumps(done))
    rows = train_all(root, tmp_path / "out")
    assert rows[0] == done and rows[1]["category"] == "b_empty" and rows[1]["status"].startswith("failed:")
    assert (tmp_path / "out" / "b_empty" / "failed.json").is_file()
    summary = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["category"] for r in summary] == ["a_done", "b_empty"] and summary[0]["image_auroc"] == "0.75"
    assert "0.7500" in format_table(rows) and "failed" in format_table(rows)
    with pytest.raises(FileNotFoundError, match="no categories"):
        find_categories(tmp_path / "out" / "a_done")


@pytest.mark.slow
def test_two_ranks_train_one_category_each(tmp_path):
    root = tmp_path / "root"
    for i, name in enumerate(("bottle", "tile")):
        make_synthetic_dataset(root / name, n_train=3, n_test_good=1, n_test_defect=1, seed=i)
    job = torchrun(
        [
            "-m",
            "efficientad_ext",
            "train-all",
            str(root),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "1",
            "--validation-fraction",
            "0.34",
        ],
        timeout=900,
    )
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["category"], r["status"], r["rank"]) for r in rows] == [("bottle", "ok", 0), ("tile", "ok", 1)]
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in rows)
    assert all((tmp_path / "out" / n / "model.safetensors").is_file() for n in ("bottle", "tile"))
    assert "bottle" in job.stdout and "tile" in job.stdout and "summary:" in job.stdout
