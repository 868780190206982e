"""Image loading, resizing, dataset layouts (MVTec AD / LOCO, VisA, folders) and ImageDataset."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import data_root
from efficientad_ext.data import (
    DatasetSplits,
    ImageDataset,
    ImageError,
    Sample,
    image_folder,
    list_images,
    load_image,
    load_mask,
    mvtec_ad,
    mvtec_loco,
    open_dataset,
    resize_image,
    resize_mask,
    visa,
)


def rgb(h=8, w=12, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, array: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def write_mask(path: Path, h=8, w=12, box=(1, 3, 2, 5)) -> Path:
    m = np.zeros((h, w), np.uint8)
    m[box[0] : box[1], box[2] : box[3]] = 255
    return write(path, m)


# ---------------------------------------------------------------------------------------------
# load_image / load_mask


def test_load_rgb_png_exact(tmp_path):
    a = rgb()
    x = load_image(write(tmp_path / "a.png", a))
    assert x.dtype == torch.float32 and x.shape == (3, 8, 12)
    torch.testing.assert_close(x, torch.from_numpy(a).permute(2, 0, 1).float() / 255, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grayscale_replicated(tmp_path, mode):
    g = rgb()[..., 0]
    img = Image.fromarray(g).convert(mode)
    p = tmp_path / "g.png"
    img.save(p)
    x = load_image(p)
    assert x.shape == (3, 8, 12)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    expected = np.asarray(img.convert("L"), np.float32) / 255
    np.testing.assert_array_equal(x[0].numpy(), expected)


def test_16bit_grayscale(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (6, 5), dtype=np.uint16)
    p = write(tmp_path / "g16.png", a)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    x = load_image(p)
    assert x.shape == (3, 6, 5)
    np.testing.assert_allclose(x[1].numpy(), a / 65535.0, rtol=1e-6, atol=1e-7)
    assert torch.equal(x[0], x[2])


def test_16bit_tiff(tmp_path):
    a = np.random.default_rng(2).integers(0, 65536, (4, 7), dtype=np.uint16)
    p = write(tmp_path / "g16.tif", a)
    np.testing.assert_allclose(load_image(p)[0].numpy(), a / 65535.0, rtol=1e-6, atol=1e-7)


def test_rgba_drops_alpha(tmp_path):
    a = rgb()
    rgba = np.concatenate([a, np.full((8, 12, 1), 7, np.uint8)], axis=2)
    x = load_image(write(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(x.numpy(), a.transpose(2, 0, 1) / np.float32(255))


def test_palette_image(tmp_path):
    img = Image.fromarray(rgb()).convert("P", palette=Image.ADAPTIVE, colors=16)
    p = tmp_path / "p.png"
    img.save(p)
    expected = np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(load_image(p).numpy(), expected)


@pytest.mark.parametrize("name,fmt", [("a.JPG", "JPEG"), ("a.bmp", "BMP"), ("a.TIFF", "TIFF")])
def test_other_formats(tmp_path, name, fmt):
    a = rgb(16, 16)
    p = tmp_path / name
    Image.fromarray(a).save(p, format=fmt)
    x = load_image(p)
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1


def test_corrupt_files_raise_image_error(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="JPEG", quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for p in (garbage, text, truncated, empty, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageError) as info:
            load_image(p)
        assert str(p) in str(info.value) and info.value.path == p
        assert isinstance(info.value, ValueError)
    with pytest.raises(ImageError, match="truncated.jpg"):
        load_mask(truncated)


def test_load_mask(tmp_path):
    p = write_mask(tmp_path / "m.png")
    m = load_mask(p)
    assert m.dtype == torch.bool and m.shape == (1, 8, 12)
    assert m.sum() == 6 and m[0, 1:3, 2:5].all()
    # RGB masks: any nonzero channel; other values than 255 count too
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0, 2] = 1
    a[3, 3] = 200
    assert load_mask(write(tmp_path / "rgb.png", a)).sum() == 2


def test_load_mask_folder_is_union(tmp_path):
    d = tmp_path / "masks"
    write_mask(d / "000.png", box=(0, 2, 0, 2))
    write_mask(d / "001.png", box=(5, 8, 9, 12))
    m = load_mask(d)
    assert m.shape == (1, 8, 12) and m.sum() == 4 + 9
    write_mask(d / "002.png", h=9)
    with pytest.raises(ImageError, match="002.png"):
        load_mask(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no image files"):
        load_mask(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# resizing


def test_resize_image_matches_antialiased_bilinear():
    x = torch.rand(3, 40, 30)
    y = resize_image(x, (16, 20))
    ref = F.interpolate(x[None], size=(16, 20), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert resize_image(torch.rand(2, 3, 40, 30), (16, 20)).shape == (2, 3, 16, 20)
    assert resize_image(x, (40, 30)) is x
    assert 0 <= y.min() and y.max() <= 1
    with pytest.raises(ValueError, match="size"):
        resize_image(x, 16)
    with pytest.raises(ValueError, match="img"):
        resize_image(torch.rand(40, 30), (16, 20))


def test_resize_mask_nearest():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = True
    r = resize_mask(m, (8, 8))
    assert r.dtype == torch.bool and r.shape == (1, 8, 8)
    assert r.sum() == 4 and r[0, :2, :2].all()
    assert resize_mask(torch.ones(2, 1, 5, 5, dtype=torch.uint8), (3, 3)).all()


# ---------------------------------------------------------------------------------------------
# layouts


DATASET_SIZE = (40, 60)
DATASET_BOX = (5, 15, 10, 25)  # write_mask's default box, scaled by 5


def make_mvtec(root: Path, loco: bool = False, n_train=3) -> Path:
    """Images of DATASET_SIZE (datasets refuse sides below 33 pixels); masks with the boxes of
    the 8x12 masks above scaled by 5, so resized to 8x12 (nearest) they are those boxes again."""
    h, w = DATASET_SIZE
    for i in range(n_train):
        write(root / "train" / "good" / f"{i:03d}.png", rgb(h, w, seed=i))
    write(root / "test" / "good" / "000.png", rgb(h, w, seed=10))
    write(root / "test" / "good" / "001.PNG", rgb(h, w, seed=11))
    write(root / "test" / "crack" / "000.png", rgb(h, w, seed=12))
    write(root / "test" / "crack" / "001.jpg", rgb(h, w, seed=13))
    write(root / "test" / "hole" / "000.png", rgb(h, w, seed=14))
    (root / "test" / "crack" / "readme.txt").write_text("ignored")
    (root / "test" / "crack" / ".hidden.png").write_bytes(b"ignored")
    if loco:
        write(root / "validation" / "good" / "000.png", rgb(h, w, seed=20))
        write_mask(root / "ground_truth" / "crack" / "000" / "000.png", h, w, box=(0, 10, 0, 10))
        write_mask(root / "ground_truth" / "crack" / "000" / "001.png", h, w, box=(25, 40, 45, 60))
        write_mask(root / "ground_truth" / "crack" / "001" / "000.png", h, w, box=DATASET_BOX)
        write_mask(root / "ground_truth" / "hole" / "000_mask.png", h, w, box=DATASET_BOX)  # AD style also accepted
    else:
        write_mask(root / "ground_truth" / "crack" / "000_mask.png", h, w, box=DATASET_BOX)
        write_mask(root / "ground_truth" / "crack" / "001_mask.png", h, w, box=DATASET_BOX)
        write_mask(root / "ground_truth" / "hole" / "000_mask.png", h, w, box=DATASET_BOX)
    return root


def test_mvtec_ad(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    s = mvtec_ad(root)
    assert isinstance(s, DatasetSplits) and s.validation == []
    assert [p.path.name for p in s.train] == ["000.png", "001.png", "002.png"]
    assert all(x.label == 0 and x.defect_type == "good" and x.mask_path is None for x in s.train)
    assert [(x.path.parent.name, x.path.name, x.label) for x in s.test] == [
        ("crack", "000.png", 1),
        ("crack", "001.jpg", 1),
        ("good", "000.png", 0),
        ("good", "001.PNG", 0),
        ("hole", "000.png", 1),
    ]
    crack = s.test[1]
    assert crack.defect_type == "crack" and crack.mask_path == root / "ground_truth" / "crack" / "001_mask.png"
    assert open_dataset(root) == s
    assert open_dataset(root, "mvtec_ad") == s


def test_mvtec_ad_with_image_labels_only(tmp_path):
    """Sets without ground_truth/ (or with some masks missing) are read: those anomalous
    images have no mask_path, and evaluation skips the pixel metrics (test_train)."""
    root = make_mvtec(tmp_path / "cat")
    (root / "ground_truth" / "hole" / "000_mask.png").unlink()
    hole = [x for x in mvtec_ad(root).test if x.defect_type == "hole"]
    assert hole and all(x.label == 1 and x.mask_path is None for x in hole)
    import shutil

    shutil.rmtree(root / "ground_truth")
    s = open_dataset(root)
    assert all(x.mask_path is None for x in s.test) and sum(x.label for x in s.test) == 3
    item = ImageDataset(s.test, (4, 6))[-1]
    assert item["label"] == 1 and not item["mask"].any()


def test_mvtec_ad_errors(tmp_path):

    with pytest.raises(FileNotFoundError, match="does not exist"):
        mvtec_ad(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    (bare / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"train/good.*expected the MVTec AD layout") as info:
        mvtec_ad(bare)
    assert "ground_truth/<defect_type>/<stem>_mask.png" in str(info.value)
    (bare / "train" / "good").mkdir(parents=True)
    (bare / "train" / "good" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="contains no images"):
        mvtec_ad(bare)
    write(bare / "train" / "good" / "0.png", rgb())
    with pytest.raises(ValueError, match="test folder .* contains no images"):
        mvtec_ad(bare)
    notest = tmp_path / "notest"
    write(notest / "train" / "good" / "0.png", rgb())
    with pytest.raises(FileNotFoundError, match="test folder"):
        mvtec_ad(notest)


def test_mvtec_loco_multi_mask_union(tmp_path):
    root = make_mvtec(tmp_path / "loco", loco=True)
    s = mvtec_loco(root)
    assert [x.path.name for x in s.validation] == ["000.png"] and s.validation[0].label == 0
    assert s.test[0].mask_path == root / "ground_truth" / "crack" / "000"
    assert s.test[-1].mask_path == root / "ground_truth" / "hole" / "000_mask.png"
    ds = ImageDataset(s.test, (8, 12))
    assert ds[0]["mask"].sum() == 4 + 9  # union of 000.png and 001.png
    assert ds[1]["mask"].sum() == 6
    assert open_dataset(root) == s
    import shutil

    shutil.rmtree(root / "validation")
    with pytest.raises(FileNotFoundError, match="validation"):
        mvtec_loco(root)
    shutil.rmtree(root / "ground_truth" / "crack" / "001")
    write(root / "validation" / "good" / "000.png", rgb())
    crack = [x for x in mvtec_loco(root).test if x.path.stem == "001" and x.defect_type == "crack"]
    assert crack[0].label == 1 and crack[0].mask_path is None  # incomplete masks: image labels for it


VISA_CSV = """object,split,label,image,mask
candle,train,normal,candle/Data/Images/Normal/0001.JPG,
candle,train,normal,candle/Data/Images/Normal/0000.JPG,
candle,test,normal,candle/Data/Images/Normal/0002.JPG,
candle,test,anomaly,candle/Data/Images/Anomaly/0000.JPG,candle/Data/Masks/Anomaly/0000.png
pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,
pcb1,test,anomaly,pcb1/Data/Images/Anomaly/0000.JPG,pcb1/Data/Masks/Anomaly/0000.png
"""


def make_visa(root: Path) -> Path:
    for line in VISA_CSV.splitlines()[1:]:
        _, _, _, image, mask = line.split(",")
        write(root / image, rgb(*DATASET_SIZE))
        if mask:
            write_mask(root / mask, *DATASET_SIZE, box=DATASET_BOX)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(VISA_CSV)
    return root


def test_visa(tmp_path):
    root = make_visa(tmp_path / "VisA")
    s = visa(root)
    assert [str(x.path.relative_to(root)) for x in s.train] == [
        "candle/Data/Images/Normal/0000.JPG",
        "candle/Data/Images/Normal/0001.JPG",
        "pcb1/Data/Images/Normal/0000.JPG",
    ]
    assert [(x.label, x.defect_type) for x in s.test] == [(1, "anomaly"), (0, "good"), (1, "anomaly")]
    assert s.test[0].mask_path == root / "candle/Data/Masks/Anomaly/0000.png" and s.test[1].mask_path is None
    c = visa(root, category="candle")
    assert len(c.train) == 2 and len(c.test) == 2 and c.validation == []
    assert open_dataset(root, category="pcb1") == visa(root, category="pcb1")
    assert open_dataset(root) == s
    with pytest.raises(ValueError, match=r"no rows of category 'fryum'.*candle.*pcb1"):
        visa(root, category="fryum")
    with pytest.raises(ValueError, match="only used by the VisA layout"):
        open_dataset(make_mvtec(tmp_path / "ad"), category="candle")
    item = ImageDataset(c.test, (4, 6))[0]
    assert item["label"] == 1 and item["mask"].any()


def test_visa_csv_errors(tmp_path):
    root = make_visa(tmp_path / "VisA")
    bad = tmp_path / "bad.csv"
    bad.write_text(VISA_CSV.replace("test,anomaly", "test,broken", 1))
    with pytest.raises(ValueError, match=r"bad.csv, line 5: label must be 'normal' or 'anomaly'"):
        visa(root, bad)
    bad.write_text("object,split,image\n")
    with pytest.raises(ValueError, match="lacks columns"):
        visa(root, bad)
    bad.write_text(VISA_CSV + "pcb1,test,normal,pcb1/missing.JPG,\n")
    with pytest.raises(FileNotFoundError, match="pcb1/missing.JPG"):
        visa(root, bad)
    bad.write_text(VISA_CSV + "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/0000.JPG,pcb1/missing_mask.png\n")
    with pytest.raises(FileNotFoundError, match="pcb1/missing_mask.png"):  # a named mask must exist
        visa(root, bad)
    bad.write_text(VISA_CSV + "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/0000.JPG,\n")
    assert visa(root, bad).test[-1].mask_path is None  # no mask named: labelled per image only
    bad.write_text(VISA_CSV.splitlines()[0] + "\n" + VISA_CSV.splitlines()[3] + "\n")
    with pytest.raises(ValueError, match="no training rows"):
        visa(root, bad)
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        visa(tmp_path)


def test_image_folder_and_auto_detection(tmp_path):
    d = tmp_path / "imgs"
    write(d / "b.png", rgb())
    write(d / "a.jpeg", rgb())
    (d / "sub").mkdir()
    write(d / "sub" / "c.png", rgb())
    assert [p.name for p in list_images(d)] == ["a.jpeg", "b.png"]
    s = image_folder(d)
    assert [x.path.name for x in s.train] == ["a.jpeg", "b.png"] and s.test == [] and s.validation == []
    assert open_dataset(d) == s and open_dataset(d, "folder") == s
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="(?s)cannot detect the layout.*MVTec AD"):
        open_dataset(empty)
    with pytest.raises(ValueError, match="contains no images"):
        image_folder(empty)
    with pytest.raises(ValueError, match="layout must be one of"):
        open_dataset(d, "coco")
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# ImageDataset


def test_image_dataset_items(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    s = mvtec_ad(root)
    ds = ImageDataset(s.test, (16, 24))
    assert len(ds) == 5
    item = ds[0]
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 16, 24) and item["mask"].dtype == torch.bool
    assert item["mask"].sum() == 6 * 4  # 2x3 box doubled in each direction (nearest)
    assert item["label"] == 1 and item["path"] == str(s.test[0].path) and item["original_size"] == DATASET_SIZE
    good = ds[2]
    assert good["label"] == 0 and not good["mask"].any()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 16, 24) and batch["label"].tolist() == [1, 1, 0, 0, 1]


def test_image_dataset_corrupt(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    bad = root / "train" / "good" / "001.png"
    bad.write_bytes(b"garbage")
    s = mvtec_ad(root)
    ds = ImageDataset(s.train, (8, 8))
    assert len(ds) == 3
    ds[0]
    with pytest.raises(ImageError, match="001.png"):
        ds[1]
    with pytest.warns(UserWarning, match=r"skipping corrupt sample: .*001\.png"):
        ds = ImageDataset(s.train, (8, 8), skip_corrupt=True)
    assert [x.path.name for x in ds.samples] == ["000.png", "002.png"]
    assert ds.skipped[0][0].path == bad
    assert ds[1]["path"].endswith("002.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ImageDataset(s.test, (8, 8), skip_corrupt=True)) == 5


def test_image_dataset_mask_size_mismatch(tmp_path):
    img = write(tmp_path / "x.png", rgb(*DATASET_SIZE))
    mask = write_mask(tmp_path / "x_mask.png", h=DATASET_SIZE[0] + 1, w=DATASET_SIZE[1])
    ds = ImageDataset([Sample(img, 1, "crack", mask)], (8, 8))
    with pytest.raises(ImageError, match="differs from its image"):
        ds[0]
    with pytest.warns(UserWarning, match="x_mask.png"):
        assert len(ImageDataset([Sample(img, 1, "crack", mask)], (8, 8), skip_corrupt=True)) == 0


# ---------------------------------------------------------------------------------------------
# shared data


def shared(name: str) -> Path:
    root = data_root()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"shared data {name} not available")
    return root / name


def test_magnetic_tile_counts():
    root = shared("magnetic-tile")
    s = mvtec_ad(root)
    assert len(s.train) == 761
    assert sum(x.label == 0 for x in s.test) == 191
    assert sum(x.label == 1 for x in s.test) == 392
    counts = {t: sum(x.defect_type == t for x in s.test) for t in ("blowhole", "break", "crack", "fray", "uneven")}
    assert counts == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert open_dataset(root) == s
    anomalous = next(x for x in s.test if x.label == 1)
    item = ImageDataset([anomalous], (256, 256))[0]
    assert torch.equal(item["image"][0], item["image"][1])  # grayscale JPEG -> 3 equal channels
    h, w = item["original_size"]
    assert load_mask(anomalous.mask_path).shape == (1, h, w)


def test_hazelnut_reduced():
    s = open_dataset(shared("mvtec-hazelnut-reduced"))
    assert len(s.train) == 50 and len(s.test) == 10 and sum(x.label for x in s.test) == 8
    item = ImageDataset(s.test[:1], (128, 128))[0]
    assert item["original_size"] == (256, 256) and item["image"].shape == (3, 128, 128)
