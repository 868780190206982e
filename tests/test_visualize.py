"""save_heatmap_png: panel layout, colours, the mask outline, atomic writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientad_ext.evaluation.visualize import OUTLINE_COLOR, jet, mask_outline, save_heatmap_png


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_three_panels_with_outline(tmp_path):
    h, w = 40, 56
    image = torch.rand(3, h, w) * 0.5  # no pure green anywhere
    amap = torch.zeros(h, w)
    amap[10:20, 20:30] = 3.0
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 10:20, 20:30] = True
    path = tmp_path / "out" / "x.png"
    save_heatmap_png(image, amap, path, mask=mask)
    png = read(path)
    assert png.shape == (h, 3 * w, 3)
    np.testing.assert_array_equal(png[:, :w], np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    overlay, outlined = png[:, w : 2 * w], png[:, 2 * w :]
    is_outline = (outlined == OUTLINE_COLOR).all(axis=2)
    expected = np.zeros((h, w), bool)
    expected[10:20, 20:30] = True
    expected[11:19, 21:29] = False  # the 1-pixel boundary ring of the 10x10 square
    np.testing.assert_array_equal(is_outline, expected)
    np.testing.assert_array_equal(outlined[~expected], overlay[~expected])
    # overlay: half image, half jet; the map's max (vmax default) is dark red, 0 dark blue
    jet_max = np.rint((0.5 * image.permute(1, 2, 0).numpy() + 0.5 * jet(1.0)) * 255)
    np.testing.assert_allclose(overlay[15, 25], jet_max[15, 25], atol=1)
    assert overlay[0, 0, 2] > overlay[0, 0, 0]  # blue where the map is 0
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind


def test_two_panels_without_mask_and_resized_map(tmp_path):
    image = np.random.default_rng(0).random((3, 30, 20))
    path = tmp_path / "y.png"
    path.write_bytes(b"old")
    save_heatmap_png(image, np.random.default_rng(1).random((15, 10)), path, vmin=0.0, vmax=2.0)
    assert read(path).shape == (30, 40, 3)
    # constant and NaN maps do not fail; a mask of another size is resized (nearest)
    save_heatmap_png(torch.rand(1, 30, 20), torch.full((30, 20), float("nan")), path, mask=np.ones((60, 40), np.uint8))
    png = read(path)
    assert png.shape == (30, 60, 3) and (png[0, 40] == OUTLINE_COLOR).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.png"]


def test_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="image"):
        save_heatmap_png(torch.rand(4, 8, 8), torch.rand(8, 8), tmp_path / "a.png")
    with pytest.raises(ValueError, match="anomaly_map"):
        save_heatmap_png(torch.rand(3, 8, 8), torch.rand(2, 8, 8), tmp_path / "a.png")
    assert not list(tmp_path.iterdir())


def test_jet_and_outline_helpers():
    np.testing.assert_allclose(jet(0.0), [0, 0, 0.5])
    np.testing.assert_allclose(jet(1.0), [0.5, 0, 0])
    np.testing.assert_allclose(jet(0.5), [0.15 / 0.31, 1, 0.15 / 0.31], rtol=1e-6)
    assert jet(np.zeros((2, 3))).shape == (2, 3, 3)


def test_jet_is_matplotlibs():
    matplotlib = pytest.importorskip("matplotlib")
    x = np.linspace(0, 1, 1001)
    # matplotlib samples its map into a 256-entry table: up to one entry (1/255 of the
    # position, times jet's steepest slope, 0.5 / 0.11 ~ 4.5) apart from the exact piecewise-linear map.
    np.testing.assert_allclose(jet(x), matplotlib.colormaps["jet"](x)[:, :3], atol=4.6 / 255)
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    o = mask_outline(m)
    assert o.sum() == 8 and not o[2, 2]
    assert mask_outline(np.ones((3, 3), bool)).sum() == 8  # the image border is a boundary


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "z.png"
    path.write_bytes(b"old")

    def fail(self, fp, *args, **kwargs):  # writes part of the file, then fails
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_heatmap_png(torch.rand(3, 8, 8), torch.rand(8, 8), path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["z.png"]
