"""Psi's targets for the teacher: its feature moments over the distillation images and the
standardised (projected) features per image (:class:`DistillTargets`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from efficientad_ext.data.batches import batches
from efficientad_ext.data.image_source import ImageSource, to_unit_float
from efficientad_ext.distillation.extractors import RawFeatureExtractor, RawMoments, TargetHead
from efficientad_ext.training.augment import grayscale


def gray3(x: Tensor) -> Tensor:
    return grayscale(x).expand(-1, 3, -1, -1)


class DistillTargets:
    """Psi's standardised features: extractor + fitted :class:`TargetHead`, with the cache."""

    def __init__(self, extractor: RawFeatureExtractor, head: TargetHead, device: torch.device) -> None:
        self.extractor = extractor.to(device)
        self.head = head.to(device)
        self.device = device
        self.channels_last = next(extractor.parameters()).is_contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def compute(self, images_512: Tensor) -> Tensor:
        """[B, 3, 512, 512] in [0, 1] -> [B, C, 64, 64] float32 (contiguous)."""
        if self.channels_last:
            images_512 = images_512.contiguous(memory_format=torch.channels_last)
        return self.head(self.extractor(images_512)).contiguous()

    @torch.no_grad()
    def compute_all(self, source: ImageSource, batch_size: int = 8) -> Tensor:
        """Targets of the colour version of every image of ``source``, float16 on the CPU."""
        out = []
        for i in range(0, len(source), batch_size):
            x = to_unit_float(source.get(range(i, min(i + batch_size, len(source)))), self.device)
            out.append(self.compute(x).half().cpu())
        return torch.cat(out)


@torch.no_grad()
def estimate_moments(
    extractor: RawFeatureExtractor,
    source: ImageSource,
    samples: int,
    p_grayscale: float,
    generator: torch.Generator,
    device: torch.device,
    batch_size: int = 8,
) -> RawMoments:
    """Moments of Psi's raw features over ``samples`` draws (with replacement once
    ``samples`` exceeds the set; each draw grayscale with ``p_grayscale``)."""
    moments = RawMoments(extractor.raw_channels)
    if samples >= len(source):
        order = torch.cat(
            [torch.randperm(len(source), generator=generator) for _ in range(math.ceil(samples / len(source)))]
        )
    else:
        order = torch.randperm(len(source), generator=generator)
    order = order[:samples].tolist()
    gray = (torch.rand(samples, generator=generator) < p_grayscale).tolist()
    done = 0
    for _, images in batches(source, batch_size, indices=order, label="feature statistics"):
        x = to_unit_float(torch.stack(images), device)
        g = torch.tensor(gray[done : done + len(images)], device=device).view(-1, 1, 1, 1)
        done += len(images)
        x = torch.where(g, gray3(x), x)
        if next(extractor.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        moments.update(extractor(x))
    return moments
