"""Training images for Algorithms 1 and 3: preloaded uint8 sources and seeded hold-outs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from efficientad_ext.data.images import ImageError, load_model_image, resize_image

log = logging.getLogger("efficientad_ext.training")


class ImageSource:
    """Training images resized to ``size`` as uint8, preloaded when they fit in ``max_bytes``
    (else decoded on demand). With ``skip_corrupt`` unreadable images are dropped (and so
    decoded once up front even when not preloaded); otherwise the first one raises."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: tuple[int, int],
        max_bytes: int,
        skip_corrupt: bool = False,
        empty_message: str = "no usable training images",
    ) -> None:
        self.size = size
        self.paths: list[Path] = []
        self._cache: list[Tensor] | None = [] if len(paths) * 3 * size[0] * size[1] <= max_bytes else None
        for path in paths:
            if self._cache is None and not skip_corrupt:
                self.paths.append(Path(path))
                continue
            try:
                image = self._load(path)
            except ImageError as e:
                if not skip_corrupt:
                    raise
                log.warning("skipping unreadable image: %s", e)
                continue
            self.paths.append(Path(path))
            if self._cache is not None:
                self._cache.append(image)
        if not self.paths:
            raise ValueError(empty_message)

    def verify(self) -> None:
        """Decodes every image not preloaded once (an :class:`ImageError` names the first bad
        one): for a source read only after training, such as the validation images."""
        if self._cache is None:
            for path in self.paths:
                self._load(path)

    def subset(self, paths: Sequence[Path]) -> ImageSource:
        """The source of ``paths`` (some of this one's), sharing its preloaded images: a split
        made after ``skip_corrupt`` has dropped what cannot be read."""
        index = {p: i for i, p in enumerate(self.paths)}
        part = object.__new__(ImageSource)
        part.size, part.paths = self.size, [Path(p) for p in paths]
        part._cache = None if self._cache is None else [self._cache[index[p]] for p in part.paths]
        return part

    def _load(self, path: Path) -> Tensor:
        image = resize_image(load_model_image(path), self.size)
        return (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        """uint8 [3, H, W]."""
        return self._cache[index] if self._cache is not None else self._load(self.paths[index])

    def get(self, indices: Sequence[int]) -> Tensor:
        """uint8 [B, 3, H, W]."""
        return torch.stack([self[i] for i in indices])


def to_unit_float(images_uint8: Tensor, device: torch.device) -> Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (the copy is asynchronous from pinned memory)."""
    return images_uint8.to(device, non_blocking=True).float().div_(255.0)


def split_holdout(paths: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """``count`` paths held out by a seeded permutation of the sorted paths; returns
    ``(kept, held)``, each in sorted order."""
    paths = sorted(Path(p) for p in paths)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:count])
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def split_validation(paths: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Algorithm 1's validation images: ``fraction`` of ``paths`` (at least one when
    fraction > 0), held out with ``seed``."""
    if fraction <= 0:
        return sorted(Path(p) for p in paths), []
    if len(paths) < 2:
        raise ValueError(f"need at least 2 training images to hold out validation images, got {len(paths)}")
    return split_holdout(paths, max(1, round(fraction * len(paths))), seed)
