"""Image and mask files: decoding (every mode a camera writes), checks, and resizing.

Images load as float32 ``[3, H, W]`` RGB in ``[0, 1]`` at their original size; masks as bool
``[1, H, W]`` (nonzero = anomalous). Images resize bilinearly with antialiasing (as
torchvision's ``Resize`` on tensors), masks by nearest neighbour.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

PathLike = str | Path


class ImageError(ValueError):
    """An image or mask file that cannot be read or decoded; ``path`` names the file."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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


# The smallest image side accepted anywhere (files and in-memory batches), before any resize to
# the model's size: the PDNs' 33x33 receptive field. A smaller image holds less than one patch
# the networks were trained to score; upsampled to 256 it would be scored (or trained on) as a
# blur, and a 1x1 one makes every map constant, so no map quantiles can be calibrated from it.
MIN_INPUT_SIDE = 33


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


def load_model_image(path: PathLike) -> Tensor:
    """:func:`load_image` for the images a model trains on, is calibrated on or scores: also
    an :class:`ImageError` (so ``skip_corrupt`` skips it) when a side is below
    :data:`MIN_INPUT_SIDE`."""
    image = load_image(path)
    check_min_side(path, int(image.shape[2]), int(image.shape[1]))
    return image


def check_min_side(path: PathLike, width: int, height: int) -> None:
    """An :class:`ImageError` naming ``path`` when a side is below :data:`MIN_INPUT_SIDE`."""
    if min(width, height) < MIN_INPUT_SIDE:
        raise ImageError(
            path,
            f"{width}x{height} pixels is below the {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} minimum (one receptive field)",
        )


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
                "'nonzero in any channel is anomalous'",
                NonBinaryMaskWarning,
                stacklevel=2,
            )
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
                    f,
                    f"mask size {m.shape[1]}x{m.shape[0]} differs from {files[0].name}'s "
                    f"{union.shape[1]}x{union.shape[0]} in the same mask folder",
                )
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
    out = F.interpolate(x if batched else x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
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


def broken_links(folder: PathLike) -> list[Path]:
    """The symbolic links directly inside ``folder`` with an image extension that lead to no
    file: the target is missing, or the links form a loop. Sorted by name."""
    d = Path(folder)
    links = [p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    # is_file() follows the link; it is False for a missing target and for a loop (ELOOP).
    return sorted((p for p in links if p.is_symlink() and not p.is_file()), key=lambda p: p.name)


def list_images(folder: PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`,
    any case; hidden files such as macOS ``._x.png`` skipped), sorted by name. Symbolic links
    are followed; one that leads to no file (:func:`broken_links`) is left out with a warning
    naming it.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder {d} does not exist" if not d.exists() else f"{d} is not a folder")
    files = [
        p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    broken = broken_links(d)
    if broken:
        shown = ", ".join(str(p) for p in broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        warnings.warn(
            f"skipping {len(broken)} symbolic link(s) in {d} that lead to no file (missing target or a loop): {shown}",
            stacklevel=2,
        )
    return sorted(files, key=lambda p: p.name)
