"""Image datasets: file decoding (:mod:`.images`), the folder layouts of MVTec AD, MVTec LOCO and VisA
(:mod:`.layouts`), the one dataset (:mod:`.dataset`) and batch loop (:mod:`.batches`), the
training images (:mod:`.image_source`) and the synthetic set (:mod:`.synthetic`).

Images load as float32 ``[3, H, W]`` RGB in ``[0, 1]`` at their original size; masks as bool
``[1, H, W]`` (nonzero = anomalous). :class:`ImageDataset` resizes both to one ``image_size``
(images bilinear with antialiasing, as torchvision's ``Resize`` on tensors; masks nearest).

The layout readers only list files (sorted, so the order is deterministic) and check the
folders; no image is decoded until :func:`load_image` / :class:`ImageDataset` asks for it.
"""

from __future__ import annotations

from efficientad_ext.data.dataset import ImageDataset
from efficientad_ext.data.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    NonBinaryMaskWarning,
    broken_links,
    list_images,
    load_image,
    load_mask,
    pil_to_float_array,
    resize_image,
    resize_mask,
)
from efficientad_ext.data.layouts import DatasetSplits, Sample, image_folder, mvtec_ad, mvtec_loco, open_dataset, visa

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "ImageDataset",
    "ImageError",
    "NonBinaryMaskWarning",
    "Sample",
    "image_folder",
    "broken_links",
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
