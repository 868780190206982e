"""Anomaly map figures as PNG files, with PIL only (no matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from efficientad_ext.formats.atomic import write_atomically

__all__ = [
    "OUTLINE_COLOR",
    "heatmap_name",
    "heatmap_panels",
    "jet",
    "mask_outline",
    "save_heatmap_png",
    "save_png_atomic",
]


def heatmap_name(image_path: str | Path) -> str:
    """The heatmap file of an image: its whole file name plus ``.png`` (``000.jpg`` ->
    ``000.jpg.png``). The extension stays, so ``000.png`` and ``000.jpg`` in one folder (which
    a run scores as two images) cannot overwrite each other's heatmap."""
    return f"{Path(image_path).name}.png"


OUTLINE_COLOR = (0, 255, 0)


def save_png_atomic(img: Image.Image, path: str | Path) -> Path:
    """Save ``img`` as PNG at ``path`` atomically (:func:`~efficientad_ext.formats.atomic.write_atomically`:
    a crash never leaves a partial PNG under ``path``). Creates missing parent folders."""
    return write_atomically(path, lambda tmp: img.save(tmp, format="PNG"))


# The jet colour map as matplotlib defines it: for each of red, green and blue, the
# piecewise-linear function through these (position, value) points. Written as data so that
# heatmaps need no plotting library (matplotlib is an optional extra, not a dependency), while
# their colours are the ones users know from matplotlib (a test compares the two).
_JET_POINTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),  # red
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),  # green
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),  # blue
)


def jet(x: np.ndarray) -> np.ndarray:
    """The jet colour map (matplotlib's): values in [0, 1] (clipped) -> float32 RGB ``[..., 3]`` in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    channels = [np.interp(x, [p for p, _ in pts], [v for _, v in pts]) for pts in _JET_POINTS]
    return np.stack(channels, axis=-1).astype(np.float32)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool ``[H, W]`` mask: set pixels with a 4-neighbour outside
    the mask (pixels on the image border count as boundary)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~interior


def _dilate(m: np.ndarray, radius: int) -> np.ndarray:
    """``m`` grown by ``radius`` pixels (a square neighbourhood)."""
    if radius == 0:
        return m
    h, w = m.shape
    padded = np.pad(m, radius, constant_values=False)
    out = np.zeros_like(m)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        t = x.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    return np.asarray(x)


def _resize_to(a: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if a.shape == hw:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(t, size=hw, mode="nearest")
    else:
        out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def save_heatmap_png(
    image: Tensor | np.ndarray,
    anomaly_map: Tensor | np.ndarray,
    path: str | Path,
    mask: Tensor | np.ndarray | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
    *,
    alpha: float = 0.5,
    outline_color: tuple[int, int, int] = OUTLINE_COLOR,
) -> None:
    """Write :func:`heatmap_panels` of these arguments as one PNG at ``path``, atomically
    (temporary file, then ``os.replace``); missing parent folders are created."""
    panels = heatmap_panels(image, anomaly_map, mask, vmin, vmax, alpha=alpha, outline_color=outline_color)
    save_png_atomic(Image.fromarray(np.concatenate(panels, axis=1)), path)


def _image_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1] from [3, H, W], [1, H, W] or [H, W] (NaN drawn as 0)."""
    img = _as_array(image, "image").astype(np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
        img = img.transpose(1, 2, 0)
    elif img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    else:
        raise ValueError(f"image must be [3, H, W], [1, H, W] or [H, W], got shape {img.shape}")
    img = np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0)

    return img


def _map_2d(anomaly_map: Tensor | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float32 [H, W] from [H', W'] or [1, H', W'], resized bilinearly to ``hw``."""
    amap = _as_array(anomaly_map, "anomaly_map").astype(np.float32)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be [H, W] or [1, H, W], got shape {amap.shape}")
    amap = _resize_to(amap, hw, nearest=False)
    return amap


def _mask_2d(mask: Tensor | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W] (nonzero = anomalous) from [H', W'] or [1, H', W'], nearest-neighbour resized."""
    m = _as_array(mask, "mask")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W] or [1, H, W], got shape {m.shape}")
    return _resize_to((m != 0).astype(np.float32), hw, nearest=True) > 0.5


def heatmap_panels(
    image: Tensor | np.ndarray,
    anomaly_map: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
    *,
    alpha: float = 0.5,
    outline_color: tuple[int, int, int] = OUTLINE_COLOR,
    outline_width: int = 1,
) -> list[np.ndarray]:
    """The panels of one heatmap figure, uint8 RGB ``[H, W, 3]`` each, of the image's size ``H x W``:

    1. the image;
    2. the image blended with the jet-coloured map (``alpha`` 0.5; the map is scaled from
       ``[vmin, vmax]`` to [0, 1] and clipped; ``vmax`` defaults to the map's maximum);
    3. only when ``mask`` is given: panel 2 with the mask's boundary pixels drawn in
       ``outline_color``, ``outline_width`` pixels wide (inward and outward from the boundary;
       wider lines survive downscaling to thumbnails).

    So a PNG of them side by side is ``3W x H`` with a mask and ``2W x H`` without. ``image`` is ``[3, H, W]``
    (or ``[1, H, W]`` / ``[H, W]`` grayscale) in [0, 1] (clipped). ``anomaly_map`` is
    ``[H', W']`` (or ``[1, H', W']``) and is resized bilinearly to ``H x W`` when its size
    differs; ``mask`` (nonzero = anomalous) is resized by nearest neighbour. NaN map pixels
    are drawn as ``vmin``.
    """
    img = _image_hwc(image)
    h, w = img.shape[:2]
    amap = _map_2d(anomaly_map, (h, w))
    lo = float(vmin)
    finite = amap[np.isfinite(amap)]
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else lo)
    amap = np.nan_to_num(amap, nan=lo)
    scaled = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    overlay = (1.0 - alpha) * img + alpha * jet(scaled)

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    panels = [to_u8(img), to_u8(overlay)]
    if mask is not None:
        m = _mask_2d(mask, (h, w))
        if outline_width < 1:
            raise ValueError(f"outline_width must be >= 1, got {outline_width}")
        outlined = panels[1].copy()
        outlined[_dilate(mask_outline(m), outline_width - 1)] = np.asarray(outline_color, dtype=np.uint8)
        panels.append(outlined)
    return panels
