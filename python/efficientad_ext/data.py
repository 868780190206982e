"""Image datasets: loading, resizing and the folder layouts of MVTec AD, MVTec LOCO and VisA.

Images load as float32 ``[3, H, W]`` RGB in ``[0, 1]`` at their original size; masks as bool
``[1, H, W]`` (nonzero = anomalous). :class:`ImageDataset` resizes both to one ``image_size``
(images bilinear with antialiasing, as torchvision's ``Resize`` on tensors; masks nearest).

The layout readers only list files (sorted, so the order is deterministic) and check the
folders; no image is decoded until :func:`load_image` / :class:`ImageDataset` asks for it.
"""
from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "ImageDataset",
    "ImageError",
    "NonBinaryMaskWarning",
    "Sample",
    "image_folder",
    "list_images",
    "load_image",
    "load_mask",
    "mvtec_ad",
    "mvtec_loco",
    "open_dataset",
    "pil_to_float_array",
    "resize_image",
    "resize_mask",
    "visa",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

PathLike = str | Path


class ImageError(ValueError):
    """An image or mask file that cannot be read or decoded; ``path`` names the file."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------------------------
# Loading and resizing


class NonBinaryMaskWarning(UserWarning):
    """A ground-truth mask with values other than 0 and one maximum (binarised: nonzero is anomalous)."""


def _open_decoded(path: PathLike) -> Image.Image:
    """Open ``path`` with PIL and decode it fully (truncated files fail here, not later)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "file does not exist")
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    try:
        with open(p, "rb") as fh:
            img = Image.open(fh)
            img.load()  # decodes every byte now; the pixels stay valid after fh is closed
            return img
    except PermissionError as e:
        raise ImageError(p, f"cannot be read ({e.strerror or e})") from None
    except UnidentifiedImageError:
        raise ImageError(p, "not an image file (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(p, f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageError(p, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def _to_float_array(img: Image.Image, path: Path) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from any PIL mode."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "I":
        # 32-bit integer pixels: PIL's mode for 16-bit PNG / TIFF files; scaled as 16-bit.
        a = np.clip(np.asarray(img, dtype=np.float64), 0, 65535).astype(np.float32) / 65535.0
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageError(path, "float image contains NaN or infinity")
        if a.size and a.max() > 1.0:
            a = a / 255.0  # float images with 8-bit values
        a = np.clip(a, 0.0, 1.0)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("1", "L", "LA"):
        a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # applies the palette (and its transparency, dropped below)
    if img.mode != "RGB":
        img = img.convert("RGB")  # RGBA/RGBa drop alpha; CMYK, YCbCr, LAB, HSV converted
    return np.asarray(img, dtype=np.float32) / 255.0


def pil_to_float_array(img: Image.Image, name: str) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from an in-memory PIL image, by the conversion
    :func:`load_image` applies to files (so ``infer([pil, ...])`` and the CLI agree, 16-bit
    modes included). ``name`` labels errors. Raises :class:`ImageError`."""
    try:
        return _to_float_array(img, Path(name))
    except (OSError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(Path(name), f"cannot convert PIL mode {img.mode!r} to RGB ({e})") from None


def load_image(path: PathLike) -> Tensor:
    """Decode an image file into a float32 ``[3, H, W]`` RGB tensor in ``[0, 1]``.

    Grayscale files (``1``, ``L``, 16-bit ``I;16``/``I``, float ``F``) are replicated to three
    channels (16-bit values divided by 65535); RGBA, LA and palette images are converted to RGB
    with the alpha channel dropped (not composited). EXIF orientation is not applied (masks
    carry none, so applying it could misalign them). The whole file is decoded, so a truncated
    file raises here (unless the caller set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``).

    Raises:
        ImageError: the file is missing, not an image, corrupt or truncated (names the file).
    """
    p = Path(path)
    img = _open_decoded(p)
    try:
        a = _to_float_array(img, p)
    except (OSError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(p, f"cannot convert PIL mode {img.mode!r} to RGB ({e})") from None
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _mask_array(path: Path) -> np.ndarray:
    img = _open_decoded(path)
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        a = np.asarray(img)[..., :-1]  # alpha is not part of the mask
    else:
        try:
            a = np.asarray(img)
        except (OSError, ValueError) as e:
            raise ImageError(path, f"cannot read mask pixels of PIL mode {mode!r} ({e})") from None
    if a.size and a.dtype != bool:
        # Binary: every value is 0 or the mask's maximum (0/255, 0/1, white on black). Anything
        # else (JPEG noise, soft edges, a colour image) is binarised by the documented rule,
        # with a warning, because the result may not be what the mask's author meant.
        top = a.max()
        if not ((a == 0) | (a == top)).all():
            warnings.warn(
                f"{path}: mask is not binary (values other than 0 and {top}); binarised by the rule "
                "'nonzero in any channel is anomalous'", NonBinaryMaskWarning, stacklevel=2)
    if a.ndim == 3:
        a = (a != 0).any(axis=2)
    return a != 0


def load_mask(path: PathLike) -> Tensor:
    """Decode a ground-truth mask into a bool ``[1, H, W]`` tensor: nonzero pixels (in any
    colour channel; alpha ignored) are anomalous. A mask that is not binary (values other
    than 0 and its maximum) is binarised by the same rule with a :class:`NonBinaryMaskWarning`.

    ``path`` may also be a folder of mask images (MVTec LOCO's ``ground_truth/<type>/<stem>/``
    with ``000.png``, ``001.png``, ...): the result is their union; they must share one size.

    Raises:
        ImageError: a missing, corrupt or non-image file, an empty mask folder, or mask
        images of different sizes in one folder (names the file).
    """
    p = Path(path)
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise ImageError(p, "mask folder contains no image files")
        union: np.ndarray | None = None
        for f in files:
            m = _mask_array(f)
            if union is None:
                union = m.copy()
            elif m.shape != union.shape:
                raise ImageError(
                    f, f"mask size {m.shape[1]}x{m.shape[0]} differs from {files[0].name}'s "
                    f"{union.shape[1]}x{union.shape[0]} in the same mask folder")
            else:
                union |= m
        assert union is not None
        return torch.from_numpy(union)[None]
    return torch.from_numpy(np.ascontiguousarray(_mask_array(p)))[None]


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) or len(size) != 2:
        raise ValueError(f"size must be a pair (height, width), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def resize_image(img: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``[3, H, W]`` or ``[B, 3, H, W]`` (any channel count) to ``size = (height,
    width)``: bilinear with antialiasing when shrinking, ``align_corners=False`` (what
    torchvision's ``Resize`` does on tensors). Returns the input itself when it already has
    that size. Integer inputs are resized as float32."""
    h, w = _check_size(size)
    if img.dim() not in (3, 4):
        raise ValueError(f"img must be [C, H, W] or [B, C, H, W], got shape {tuple(img.shape)}")
    if tuple(img.shape[-2:]) == (h, w):
        return img
    x = img if img.is_floating_point() else img.float()
    batched = x.dim() == 4
    out = F.interpolate(x if batched else x[None], size=(h, w), mode="bilinear",
                        align_corners=False, antialias=True)
    return out if batched else out[0]


def resize_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a mask ``[1, H, W]`` or ``[B, 1, H, W]`` to ``size = (height, width)`` by nearest
    neighbour (``mode="nearest"``, torchvision's ``InterpolationMode.NEAREST``); returns bool."""
    h, w = _check_size(size)
    if mask.dim() not in (3, 4):
        raise ValueError(f"mask must be [1, H, W] or [B, 1, H, W], got shape {tuple(mask.shape)}")
    m = mask if mask.dtype == torch.bool else mask != 0
    if tuple(m.shape[-2:]) == (h, w):
        return m
    batched = m.dim() == 4
    x = m.to(torch.uint8)
    out = F.interpolate(x if batched else x[None], size=(h, w), mode="nearest")
    out = out != 0
    return out if batched else out[0]


# ---------------------------------------------------------------------------------------------
# Samples and layouts


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


def list_images(folder: PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`,
    any case; hidden files such as macOS ``._x.png`` skipped), sorted by name.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder {d} does not exist" if not d.exists() else f"{d} is not a folder")
    files = [p for p in d.iterdir()
             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


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
        raise ValueError(f"{what} folder {folder} contains no images "
                         f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); {layout}")
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
            raise ValueError(f"{csv_path}: header {header} lacks columns "
                             f"{[c for c in required if c not in header]}; {_VISA_LAYOUT}")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            obj = (row["object"] or "").strip()
            if not obj and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            objects.add(obj)
            if category is not None and obj != category:
                continue
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
            if split == "train":
                if label != "normal":
                    raise ValueError(f"{csv_path}, line {line}: training image {image} is labelled anomalous")
                train.append(sample)
            else:
                test.append(sample)
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
                f"- a folder of images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if category is not None and layout != "visa":
        raise ValueError(f"category is only used by the VisA layout, got layout {layout!r}")
    if layout == "mvtec_loco":
        return mvtec_loco(p)
    if layout == "mvtec_ad":
        return mvtec_ad(p)
    if layout == "visa":
        return visa(p, category=category)
    return image_folder(p)


# ---------------------------------------------------------------------------------------------
# Dataset


class ImageDataset(torch.utils.data.Dataset):
    """Samples as a map-style dataset of resized images and masks.

    An item is a dict: ``image`` float32 ``[3, H, W]`` in ``[0, 1]`` resized to
    ``image_size = (H, W)`` (bilinear, antialiased, aspect ratio not kept); ``mask`` bool
    ``[1, H, W]`` resized by nearest neighbour (all False without a mask); ``label`` int;
    ``path`` str; ``original_size`` ``(h, w)`` of the file. A mask whose size differs from its
    image's raises :class:`ImageError`.

    With ``skip_corrupt=False`` a corrupt file raises :class:`ImageError` when its item is
    read. With ``skip_corrupt=True`` every image (and mask) is decoded once at construction;
    samples that fail are dropped with a ``warnings.warn`` naming the file, and listed in
    :attr:`skipped` as ``(sample, message)``.
    """

    def __init__(self, samples: Sequence[Sample], image_size: Sequence[int], skip_corrupt: bool = False) -> None:
        self.image_size = _check_size(image_size)
        self.skip_corrupt = skip_corrupt
        self.skipped: list[tuple[Sample, str]] = []
        kept: list[Sample] = []
        for s in samples:
            if not isinstance(s, Sample):
                raise TypeError(f"samples must be Sample objects, got {type(s).__name__}")
            if skip_corrupt:
                try:
                    self._validate(s)
                except ImageError as e:
                    self.skipped.append((s, str(e)))
                    warnings.warn(f"skipping corrupt sample: {e}", stacklevel=2)
                    continue
            kept.append(s)
        self.samples = kept

    @staticmethod
    def _validate(s: Sample) -> None:
        img = _open_decoded(s.path)
        if s.mask_path is not None:
            m = load_mask(s.mask_path)
            if tuple(m.shape[-2:]) != (img.height, img.width):
                raise ImageError(s.mask_path, f"mask size {m.shape[-1]}x{m.shape[-2]} differs from "
                                 f"its image {s.path} ({img.width}x{img.height})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        image = load_image(s.path)
        h, w = int(image.shape[1]), int(image.shape[2])
        if s.mask_path is not None:
            mask = load_mask(s.mask_path)
            if tuple(mask.shape[-2:]) != (h, w):
                raise ImageError(s.mask_path, f"mask size {mask.shape[-1]}x{mask.shape[-2]} differs from "
                                 f"its image {s.path} ({w}x{h})")
            mask = resize_mask(mask, self.image_size)
        else:
            mask = torch.zeros(1, *self.image_size, dtype=torch.bool)
        return {
            "image": resize_image(image, self.image_size),
            "mask": mask,
            "label": int(s.label),
            "path": str(s.path),
            "original_size": (h, w),
        }
