"""The folder layouts of MVTec AD, MVTec LOCO and VisA, and a plain image folder.

The readers only list files (sorted, so the order is deterministic) and check the folders; no
image is decoded until :func:`~efficientad_ext.data.images.load_image` or
:class:`~efficientad_ext.data.dataset.ImageDataset` asks for it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from efficientad_ext.data.images import IMAGE_EXTENSIONS, PathLike, list_images


@dataclass
class Sample:
    """One image of a dataset.

    ``label`` is 0 (normal) or 1 (anomalous); ``defect_type`` is ``"good"`` for normal
    images; ``mask_path`` is the ground-truth mask file (or, for MVTec LOCO, a folder of
    masks whose union is the mask), ``None`` for normal images and for anomalous images of
    sets labelled per image only (evaluation then reports the image metrics alone).
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class DatasetSplits:
    """The splits of a dataset; ``validation`` is empty when the layout has none (only MVTec
    LOCO has one), ``test`` is empty for a plain image folder."""

    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    validation: list[Sample] = field(default_factory=list)


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


_MVTEC_AD_LAYOUT = """expected the MVTec AD layout:
  <root>/train/good/*.png                       normal training images
  <root>/test/good/*.png                        normal test images
  <root>/test/<defect_type>/*.png               anomalous test images
  <root>/ground_truth/<defect_type>/<stem>_mask.png   their masks"""

_MVTEC_LOCO_LAYOUT = """expected the MVTec LOCO layout:
  <root>/train/good/*.png                       normal training images
  <root>/validation/good/*.png                  normal validation images
  <root>/test/good/*.png                        normal test images
  <root>/test/<defect_type>/*.png               anomalous test images
  <root>/ground_truth/<defect_type>/<stem>/000.png, 001.png, ...   their masks (union)
      (or <root>/ground_truth/<defect_type>/<stem>_mask.png)"""

_VISA_LAYOUT = """expected the VisA layout: a split CSV (default <root>/split_csv/1cls.csv) with
  the header  object,split,label,image,mask  (split: train/test, label: normal/anomaly, image
  and mask paths relative to <root>, mask empty for normal images)"""


def _normal_samples(folder: Path, what: str, layout: str, allow_empty: bool = False) -> list[Sample]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist; {layout}")
    files = list_images(folder)
    if not files and not allow_empty:
        raise ValueError(
            f"{what} folder {folder} contains no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); {layout}"
        )
    return [Sample(f, 0, "good", None) for f in files]


def _check_root(root: PathLike, layout: str) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset folder {r} does not exist; {layout}")
    return r


def _test_samples(root: Path, layout: str, loco: bool) -> list[Sample]:
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"test folder {test_dir} does not exist; {layout}")
    samples: list[Sample] = []
    for type_dir in _subfolders(test_dir):
        defect = type_dir.name
        for f in list_images(type_dir):
            if defect == "good":
                samples.append(Sample(f, 0, "good", None))
                continue
            ad_mask = root / "ground_truth" / defect / f"{f.stem}_mask.png"
            loco_mask = root / "ground_truth" / defect / f.stem
            if loco and loco_mask.is_dir():
                mask = loco_mask
            elif ad_mask.is_file():
                mask = ad_mask
            else:  # labelled per image only (training never needs masks; see evaluate())
                mask = None
            samples.append(Sample(f, 1, defect, mask))
    if not samples:
        raise ValueError(f"test folder {test_dir} contains no images; {layout}")
    return samples


def mvtec_ad(root: PathLike) -> DatasetSplits:
    """Read one category in the MVTec AD layout (``train/good``, ``test/<type>``,
    ``ground_truth/<type>/<stem>_mask.png``). Test images in ``test/good`` are normal; every
    other test image is anomalous, with its mask where that file exists. Sets without
    ``ground_truth/`` (image labels only, as many factory sets come) are read too: evaluation
    then reports the image metrics and skips the pixel metrics.

    Raises:
        FileNotFoundError: a missing folder (the message spells out the layout).
        ValueError: an empty ``train/good`` or ``test``.
    """
    r = _check_root(root, _MVTEC_AD_LAYOUT)
    train = _normal_samples(r / "train" / "good", "training", _MVTEC_AD_LAYOUT)
    return DatasetSplits(train=train, test=_test_samples(r, _MVTEC_AD_LAYOUT, loco=False), validation=[])


def mvtec_loco(root: PathLike) -> DatasetSplits:
    """Read one category in the MVTec LOCO layout: as MVTec AD plus ``validation/good``;
    masks are folders ``ground_truth/<type>/<stem>/`` of PNGs whose union is the mask
    (``Sample.mask_path`` is then that folder; :func:`load_mask` takes folders) or,
    alternatively, AD-style ``<stem>_mask.png`` files."""
    r = _check_root(root, _MVTEC_LOCO_LAYOUT)
    train = _normal_samples(r / "train" / "good", "training", _MVTEC_LOCO_LAYOUT)
    validation = _normal_samples(r / "validation" / "good", "validation", _MVTEC_LOCO_LAYOUT)
    return DatasetSplits(train=train, test=_test_samples(r, _MVTEC_LOCO_LAYOUT, loco=True), validation=validation)


def _visa_row(csv_path: Path, line: int, row: dict, r: Path, missing: list[Path]) -> tuple[str, Sample]:
    """One checked CSV row as (split, sample); files that do not exist are added to ``missing``."""
    split = (row["split"] or "").strip().lower()
    label = (row["label"] or "").strip().lower()
    image = (row["image"] or "").strip()
    mask = (row["mask"] or "").strip()
    if split not in ("train", "test"):
        raise ValueError(f"{csv_path}, line {line}: split must be 'train' or 'test', got {split!r}")
    if label not in ("normal", "anomaly"):
        raise ValueError(f"{csv_path}, line {line}: label must be 'normal' or 'anomaly', got {label!r}")
    if not image:
        raise ValueError(f"{csv_path}, line {line}: empty image path")
    img_path = r / image
    if not img_path.is_file():
        missing.append(img_path)
    if label == "anomaly":
        mask_path: Path | None = r / mask if mask else None  # empty: labelled per image only
        if mask_path is not None and not mask_path.is_file():
            missing.append(mask_path)
        sample = Sample(img_path, 1, "anomaly", mask_path)
    else:
        sample = Sample(img_path, 0, "good", None)
    if split == "train" and label != "normal":
        raise ValueError(f"{csv_path}, line {line}: training image {image} is labelled anomalous")
    return split, sample


def visa(root: PathLike, split_csv: PathLike | None = None, category: str | None = None) -> DatasetSplits:
    """Read VisA from its split CSV (columns ``object,split,label,image,mask``; ``split`` is
    ``train``/``test``, ``label`` ``normal``/``anomaly``; paths relative to ``root``). The
    default CSV is ``<root>/split_csv/1cls.csv``. ``category`` keeps only the rows whose
    ``object`` equals it. Anomalous samples get ``defect_type="anomaly"`` (the CSV names no
    defect types). Samples are sorted by image path within each split.

    Raises:
        FileNotFoundError: no CSV, or files it names that do not exist.
        ValueError: a malformed CSV, an unknown category, no training rows.
    """
    r = _check_root(root, _VISA_LAYOUT)
    csv_path = Path(split_csv) if split_csv is not None else r / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"split CSV {csv_path} does not exist; {_VISA_LAYOUT}")
    required = ("object", "split", "label", "image", "mask")
    train: list[Sample] = []
    test: list[Sample] = []
    objects: set[str] = set()
    missing: list[Path] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if any(c not in header for c in required):
            raise ValueError(
                f"{csv_path}: header {header} lacks columns {[c for c in required if c not in header]}; {_VISA_LAYOUT}"
            )
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            obj = (row["object"] or "").strip()
            if not obj and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            objects.add(obj)
            if category is not None and obj != category:
                continue
            split, sample = _visa_row(csv_path, line, row, r, missing)
            (train if split == "train" else test).append(sample)
    if category is not None and category not in objects:
        raise ValueError(f"{csv_path}: no rows of category {category!r}; categories: {sorted(objects)}")
    if missing:
        shown = "\n  ".join(str(m) for m in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{csv_path} names {len(missing)} files that do not exist:\n  {shown}{more}")
    if not train:
        which = f" of category {category!r}" if category is not None else ""
        raise ValueError(f"{csv_path}: no training rows{which}; {_VISA_LAYOUT}")
    key = lambda s: str(s.path)  # noqa: E731
    return DatasetSplits(train=sorted(train, key=key), test=sorted(test, key=key), validation=[])


def image_folder(path: PathLike) -> DatasetSplits:
    """All images directly in ``path`` as normal training samples (no test, no validation).

    Raises:
        FileNotFoundError: ``path`` is not a folder. ValueError: it holds no images.
    """
    layout = "expected a folder of images"
    return DatasetSplits(train=_normal_samples(Path(path), "image", layout), test=[], validation=[])


Layout = Literal["auto", "mvtec_ad", "mvtec_loco", "visa", "folder"]


def open_dataset(path: PathLike, layout: Layout = "auto", *, category: str | None = None) -> DatasetSplits:
    """Read a dataset in one of the supported layouts.

    ``layout="auto"`` detects, in this order: MVTec LOCO (``train/good``, ``validation/`` and
    ``test/``), MVTec AD (``train/good`` and ``test/``), VisA (``split_csv/1cls.csv``), a
    plain folder of images (training only). ``category`` is passed to :func:`visa` and is
    refused for the other layouts.
    """
    p = Path(path)
    layouts = ("auto", "mvtec_ad", "mvtec_loco", "visa", "folder")
    if layout not in layouts:
        raise ValueError(f"layout must be one of {layouts}, got {layout!r}")
    if not p.exists():
        raise FileNotFoundError(f"dataset folder {p} does not exist")
    if layout == "auto":
        if (p / "train" / "good").is_dir() and (p / "test").is_dir():
            layout = "mvtec_loco" if (p / "validation").is_dir() else "mvtec_ad"
        elif (p / "split_csv" / "1cls.csv").is_file():
            layout = "visa"
        elif p.is_dir() and list_images(p):
            layout = "folder"
        else:
            raise ValueError(
                f"cannot detect the layout of {p}: it is none of\n"
                f"- MVTec LOCO (train/good, validation/good, test/<type>, ground_truth/)\n"
                f"- MVTec AD (train/good, test/<type>, ground_truth/<type>/<stem>_mask.png)\n"
                f"- VisA (split_csv/1cls.csv)\n"
                f"- a folder of images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    if category is not None and layout != "visa":
        raise ValueError(f"category is only used by the VisA layout, got layout {layout!r}")
    if layout == "mvtec_loco":
        return mvtec_loco(p)
    if layout == "mvtec_ad":
        return mvtec_ad(p)
    if layout == "visa":
        return visa(p, category=category)
    return image_folder(p)
