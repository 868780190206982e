"""make_synthetic_dataset: MVTec AD layout, exact masks, reproducibility, safe re-runs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from efficientad_ext.data import ImageDataset, mvtec_ad, synthetic
from efficientad_ext.data.synthetic import DEFECT_TYPES, make_synthetic_dataset


def digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_masks(tmp_path):
    root = make_synthetic_dataset(tmp_path / "synth", n_train=5, n_test_good=3, n_test_defect=7, size=64, seed=1)
    s = mvtec_ad(root)
    assert len(s.train) == 5 and s.validation == []
    types = [x.defect_type for x in s.test]
    assert types.count("good") == 3
    assert {t: types.count(t) for t in DEFECT_TYPES} == {"scratch": 3, "spot": 2, "missing": 2}
    for x in s.test:
        with Image.open(x.path) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
        if x.label:
            with Image.open(x.mask_path) as m:
                a = np.asarray(m)
            assert a.shape == (64, 64) and set(np.unique(a)) <= {0, 255}
            assert 0 < (a > 0).mean() < 0.2
    items = ImageDataset(s.test, (32, 32))
    assert sum(bool(items[i]["mask"].any()) for i in range(len(items))) == 7
    assert not [p for p in tmp_path.iterdir() if p.name != "synth"]  # no temporary folder left


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_pixels(kind):
    params = synthetic._dataset_params(0)
    for seed in range(5):
        clean = synthetic._texture(np.random.default_rng(seed), params, 96)
        img = clean.copy()
        mask = synthetic._DEFECTS[kind](img, np.random.default_rng(100 + seed), params)
        changed = np.abs(img - clean).max(axis=2) > 1e-6
        assert mask.any()
        np.testing.assert_array_equal(changed, mask)
        # visible: at least 10 grey levels mean change, and not saturated
        assert np.abs(img - clean)[mask].mean() > 10 / 255
        assert 0.02 < img.min() and img.max() < 0.98


def test_reproducible_and_normal_images_vary(tmp_path):
    kw = dict(n_train=4, n_test_good=2, n_test_defect=3, size=48)
    a = make_synthetic_dataset(tmp_path / "a", seed=7, **kw)
    b = make_synthetic_dataset(tmp_path / "b", seed=7, **kw)
    c = make_synthetic_dataset(tmp_path / "c", seed=8, **kw)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    train = [np.asarray(Image.open(p), np.float32) for p in sorted((a / "train" / "good").iterdir())]
    assert all(np.abs(train[0] - t).mean() > 5 for t in train[1:])  # different images
    means = [t.mean() for t in train]
    assert max(means) - min(means) < 25  # one appearance


def test_rerun_and_existing_root(tmp_path):
    kw = dict(n_train=2, n_test_good=1, n_test_defect=1, size=32)
    root = make_synthetic_dataset(tmp_path / "s", **kw)
    before = digest(root)
    assert make_synthetic_dataset(tmp_path / "s", **kw) == root  # same arguments: kept as is
    assert digest(root) == before
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_dataset(tmp_path / "s", **{**kw, "seed": 1})
    (tmp_path / "empty").mkdir()
    make_synthetic_dataset(tmp_path / "empty", **kw)
    assert digest(tmp_path / "empty") == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(other, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other", "s"]
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic_dataset(tmp_path / "bad", n_train=0)


def test_defaults_make_the_demo_set(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d")
    s = mvtec_ad(root)
    assert len(s.train) == 60 and len(s.test) == 40 and sum(x.label for x in s.test) == 20


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = synthetic._save_png

    def failing(array, path):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(array, path)

    monkeypatch.setattr(synthetic, "_save_png", failing)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(tmp_path / "s", n_train=5, n_test_good=1, n_test_defect=1, size=32)
    assert list(tmp_path.iterdir()) == []
