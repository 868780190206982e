"""The ImageNet penalty images of Algorithm 1 (line 14): where they come from and how a batch is made."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from efficientad_ext.data import list_images, load_image, resize_image
from efficientad_ext.training.augment import penalty_transform
from efficientad_ext.training.config import TrainConfig

log = logging.getLogger("efficientad_ext.train")


def penalty_paths(config: TrainConfig) -> list[Path]:
    if not config.penalty_dir:
        log.warning("no penalty images given: training WITHOUT the paper's ImageNet penalty term")
        return []
    paths = list_images(config.penalty_dir)
    if not paths:
        raise ValueError(f"penalty_dir {config.penalty_dir} holds no images")
    log.info("pretraining penalty: %d images from %s", len(paths), config.penalty_dir)
    return paths


def penalty_batch(
    paths: Sequence[Path], size: tuple[int, int], generator: torch.Generator, gray: Tensor | None = None
) -> Tensor:
    """Penalty images P (Algorithm 1, line 14): each original image resized straight to twice
    ``size`` (never through ``size`` first), random grayscale, centre crop; float [B, 3, *size].
    ``gray``: the grayscale draw made beforehand (see :func:`augment.penalty_transform`)."""
    h, w = size
    raw = torch.stack([resize_image(load_image(p), (2 * h, 2 * w)) for p in paths])
    return penalty_transform(raw, size, generator, gray=gray)
