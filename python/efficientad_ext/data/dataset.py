"""The one image dataset: samples read as resized images (and masks), corrupt files skipped,
refused, or reported per item."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from efficientad_ext.data.images import (
    ImageError,
    _check_size,
    _open_decoded,
    check_min_side,
    load_mask,
    load_model_image,
    resize_image,
    resize_mask,
)
from efficientad_ext.data.layouts import Sample


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
    :attr:`skipped` as ``(sample, message)``. With ``report_errors=True`` nothing is decoded
    up front: an item that fails has ``image`` and ``mask`` ``None`` and ``error`` the message
    (every item has ``error``, ``""`` when it read), so one pass over a large folder goes on past
    corrupt files and can say which they were.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: Sequence[int],
        skip_corrupt: bool = False,
        report_errors: bool = False,
    ) -> None:
        if skip_corrupt and report_errors:
            raise ValueError(
                "skip_corrupt and report_errors exclude each other: skip drops a corrupt sample "
                "up front, report returns it as an item with its error"
            )
        self.image_size = _check_size(image_size)
        self.report_errors = report_errors
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
        check_min_side(s.path, img.width, img.height)
        if s.mask_path is not None:
            m = load_mask(s.mask_path)
            if tuple(m.shape[-2:]) != (img.height, img.width):
                raise ImageError(
                    s.mask_path,
                    f"mask size {m.shape[-1]}x{m.shape[-2]} differs from its image {s.path} ({img.width}x{img.height})",
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if not self.report_errors:
            return self._read(self.samples[index])
        s = self.samples[index]
        try:
            return {**self._read(s), "error": ""}
        except ImageError as e:
            return {
                "image": None,
                "mask": None,
                "label": int(s.label),
                "path": str(s.path),
                "original_size": None,
                "error": str(e),
            }

    def _read(self, s: Sample) -> dict:
        image = load_model_image(s.path)
        h, w = int(image.shape[1]), int(image.shape[2])
        if s.mask_path is not None:
            mask = load_mask(s.mask_path)
            if tuple(mask.shape[-2:]) != (h, w):
                raise ImageError(
                    s.mask_path,
                    f"mask size {mask.shape[-1]}x{mask.shape[-2]} differs from its image {s.path} ({w}x{h})",
                )
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
