"""A small procedural anomaly detection dataset in the MVTec AD layout (numpy + PIL only).

Normal images are a woven texture: two families of threads (sinusoids at a per-dataset
period and orientation) with an over/under modulation, per image a random phase, a smooth
low-frequency shading field, brightness jitter and pixel noise, in one per-dataset tint. So
normal images differ pixel by pixel but share their statistics.

Defects (test only), each with its exact mask (the pixels the defect changed):

- ``scratch``: one or two thin line segments, lighter or darker than the texture;
- ``spot``: an irregular blob recoloured towards another hue with its own fine texture;
- ``missing``: a (rotated) rectangular patch replaced by a flat colour near the image mean.

Defects are clearly visible but not saturated (no pure black or white), and pixel noise is
added after them, as over the rest of the image.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEFECT_TYPES", "make_synthetic_dataset"]

DEFECT_TYPES = ("scratch", "spot", "missing")
_MARKER = "synthetic.json"
_VERSION = 1


def _dataset_params(seed: int) -> dict:
    rng = np.random.default_rng([seed, 0])
    return {
        "tint": rng.uniform([0.75, 0.6, 0.45], [1.0, 0.85, 0.7]),
        "period": rng.uniform(12.0, 20.0),  # thread period in pixels at size 256
        "angle": rng.uniform(-0.35, 0.35),  # radians
        "spot_tint": rng.uniform([0.25, 0.35, 0.6], [0.45, 0.55, 0.85]),  # a bluish hue
    }


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 5) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _texture(rng: np.random.Generator, params: dict, size: int) -> np.ndarray:
    """One normal image without pixel noise: float32 [size, size, 3] in about [0.2, 0.9]."""
    scale = size / 256.0
    k = 2.0 * np.pi / (params["period"] * scale)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(params["angle"]), np.sin(params["angle"])
    u = c * x + s * y
    v = -s * x + c * y
    ph = rng.uniform(0.0, 2.0 * np.pi, 4)
    warp = np.sin(k * u + ph[0])
    weft = np.sin(k * v + ph[1])
    over = np.tanh(3.0 * np.sin(0.5 * k * u + ph[2]) * np.sin(0.5 * k * v + ph[3]))  # over / under
    g = 0.55 + 0.08 * warp * (1 + over) + 0.08 * weft * (1 - over)
    g += 0.04 * _smooth_field(rng, size) + rng.uniform(-0.04, 0.04)
    return (g[..., None] * params["tint"]).astype(np.float32)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = img + np.float32(0.015) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _random_point(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    return rng.uniform(margin * size, (1.0 - margin) * size, 2)


def _draw_mask(size: int, draw) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(m))
    return np.asarray(m) > 0


def _scratch(img: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    size = img.shape[0]
    scale = size / 256.0
    p = _random_point(rng, size, 0.2)
    points = [tuple(p)]
    angle = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(1, 3))):
        length = rng.uniform(0.12, 0.3) * size
        angle += rng.uniform(-0.6, 0.6)
        p = np.clip(p + length * np.array([np.cos(angle), np.sin(angle)]), 0.05 * size, 0.95 * size)
        points.append(tuple(p))
    width = max(1, int(round(rng.choice([2, 3]) * scale)))
    mask = _draw_mask(
        size, lambda d: d.line([(float(a), float(b)) for a, b in points], fill=255, width=width, joint="curve")
    )
    if rng.random() < 0.5:
        img[mask] = img[mask] + 0.45 * (1.0 - img[mask])  # lighter, towards (not to) white
    else:
        img[mask] = img[mask] * 0.45  # darker
    return mask


def _spot(img: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    size = img.shape[0]
    scale = size / 256.0
    cy, cx = _random_point(rng, size, 0.15)
    radius = rng.uniform(9.0, 24.0) * scale
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.arctan2(y - cy, x - cx)
    ph = rng.uniform(0, 2 * np.pi, 2)
    r = radius * (1.0 + 0.25 * np.sin(3 * theta + ph[0]) + 0.12 * np.sin(5 * theta + ph[1]))
    mask = np.hypot(y - cy, x - cx) < r
    if not mask.any():
        mask[int(cy), int(cx)] = True
    fine = 0.5 + 0.25 * np.sin(2 * np.pi * (x + y) / (5.0 * scale) + rng.uniform(0, 2 * np.pi))
    colour = fine[..., None] * params["spot_tint"] + 0.25
    img[mask] = 0.4 * img[mask] + 0.6 * colour[mask]
    return mask


def _missing(img: np.ndarray, rng: np.random.Generator, params: dict) -> np.ndarray:
    size = img.shape[0]
    cy, cx = _random_point(rng, size, 0.2)
    h, w = rng.uniform(0.07, 0.16, 2) * size
    a = rng.uniform(0, np.pi)
    c, s = np.cos(a), np.sin(a)
    corners = [
        (cx + c * dx - s * dy, cy + s * dx + c * dy)
        for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    ]
    mask = _draw_mask(size, lambda d: d.polygon([(float(px), float(py)) for px, py in corners], fill=255))
    flat = img.reshape(-1, 3).mean(axis=0) * rng.uniform(0.8, 0.9)
    img[mask] = flat
    return mask


_DEFECTS = {"scratch": _scratch, "spot": _spot, "missing": _missing}


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _check_counts(n_train: int, n_test_good: int, n_test_defect: int, size: int) -> None:
    for name, value, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_defect", n_test_defect, 0),
        ("size", size, 32),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if n_test_good + n_test_defect == 0:
        raise ValueError("the test set must not be empty: n_test_good + n_test_defect >= 1")


def _made_with(root: Path, settings: dict) -> bool:
    """Whether ``root`` holds a dataset made with ``settings`` (its marker file says so)."""
    try:
        return json.loads((root / _MARKER).read_text()) == settings
    except (OSError, ValueError):
        return False


def _write_dataset(tmp: Path, settings: dict) -> None:
    """Every image, mask and the marker of the dataset ``settings`` describes, under ``tmp``."""
    seed, size = settings["seed"], settings["size"]
    params = _dataset_params(seed)

    def image(split: int, index: int) -> tuple[np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([seed, split, index])
        return _texture(rng, params, size), rng

    for split, folder, count in (
        (1, tmp / "train" / "good", settings["n_train"]),
        (2, tmp / "test" / "good", settings["n_test_good"]),
    ):
        folder.mkdir(parents=True)
        for i in range(count):
            img, rng = image(split, i)
            _save_png(_finish(img, rng), folder / f"{i:03d}.png")
    counters = dict.fromkeys(DEFECT_TYPES, 0)
    for i in range(settings["n_test_defect"]):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        stem = f"{counters[kind]:03d}"
        counters[kind] += 1
        img, rng = image(3, i)
        mask = _DEFECTS[kind](img, rng, params)
        for folder in (tmp / "test" / kind, tmp / "ground_truth" / kind):
            folder.mkdir(parents=True, exist_ok=True)
        _save_png(_finish(img, rng), tmp / "test" / kind / f"{stem}.png")
        _save_png(mask.astype(np.uint8) * 255, tmp / "ground_truth" / kind / f"{stem}_mask.png")
    (tmp / _MARKER).write_text(json.dumps(settings, indent=1) + "\n")


def make_synthetic_dataset(
    root: str | Path, n_train: int = 60, n_test_good: int = 20, n_test_defect: int = 20, size: int = 256, seed: int = 0
) -> Path:
    """Write a synthetic category in the MVTec AD layout at ``root`` and return ``root``.

    ``root/train/good/000.png ...`` (``n_train``), ``root/test/good/`` (``n_test_good``),
    ``root/test/<type>/`` for ``type`` in :data:`DEFECT_TYPES` (``n_test_defect`` in total,
    dealt round robin: 20 gives 7 scratch, 7 spot, 6 missing) and
    ``root/ground_truth/<type>/<stem>_mask.png`` (0/255). RGB PNGs of ``size x size``; the
    same arguments give byte-identical files.

    The dataset is built in a hidden temporary folder beside ``root`` and renamed to ``root``
    when complete, so an interrupted run leaves no partial dataset (nor a partial PNG) under
    ``root``. ``root`` may not exist yet or be an empty folder. If it already holds a dataset
    made with the same arguments (recorded in ``root/synthetic.json``) it is returned as is;
    any other non-empty ``root`` raises ``FileExistsError``.
    """
    _check_counts(n_train, n_test_good, n_test_defect, size)
    root = Path(root)
    settings = {
        "version": _VERSION,
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "size": int(size),
        "seed": int(seed),
    }
    if root.exists():
        if _made_with(root, settings):
            return root
        if not root.is_dir() or any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not empty (nor a synthetic dataset made with "
                f"{settings}); remove it or choose another root"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(tmp, settings)
        if root.is_dir():
            try:
                root.rmdir()  # empty (checked above); a rename cannot replace a folder
            except OSError:
                pass
        try:
            os.replace(tmp, root)
        except OSError:
            if _made_with(root, settings):  # a concurrent call made the same dataset first
                return root
            raise FileExistsError(f"cannot move the new dataset into {root}: it exists and is not empty") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
