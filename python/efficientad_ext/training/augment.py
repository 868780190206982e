"""Image augmentations of EfficientAD's training, on float images in [0, 1], [B, 3, H, W].

Autoencoder branch (Algorithm 1, line 16): one of brightness, contrast or saturation with a
factor drawn from U(0.8, 1.2), per image, defined as torchvision's colour adjustments.
Penalty images: resize the *original* ImageNet image to twice the image size, random
grayscale (p = 0.3), centre crop (the paper's recipe; resizing to the image size first and then
up again would feed the student images blurred by 2x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def draw_color_jitter(b: int, generator: torch.Generator, low: float = 0.8, high: float = 1.2) -> tuple[Tensor, Tensor]:
    """The random draws of :func:`color_jitter_one_of` for ``b`` images, in its order: the kind
    (0 brightness, 1 contrast, 2 saturation) [b] and the factor [b]."""
    kind = torch.randint(0, 3, (b,), generator=generator)
    return kind, torch.rand(b, generator=generator) * (high - low) + low


def color_jitter_one_of(
    x: Tensor,
    generator: torch.Generator,
    low: float = 0.8,
    high: float = 1.2,
    *,
    draws: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Per image, one of brightness / contrast / saturation with factor ~ U(low, high).

    ``draws``: (kind, factor) from :func:`draw_color_jitter` made beforehand (data-parallel
    training draws them for the whole global batch and passes each rank its share); then
    ``generator`` is not used."""
    b = x.shape[0]
    kind, factor = draws if draws is not None else draw_color_jitter(b, generator, low, high)
    factor = factor.to(x.device, x.dtype).view(b, 1, 1, 1)
    gray = grayscale(x)
    brightness = blend(x, torch.zeros_like(x), factor)
    contrast = blend(x, gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
    saturation = blend(x, gray.expand_as(x), factor)
    k = kind.to(x.device).view(b, 1, 1, 1)
    return torch.where(k == 0, brightness, torch.where(k == 1, contrast, saturation))


def draw_grayscale(b: int, generator: torch.Generator, p_gray: float = 0.3) -> Tensor:
    """The random draw of :func:`penalty_transform` for ``b`` images: which become grayscale, bool [b]."""
    return torch.rand(b, generator=generator) < p_gray


def penalty_transform(
    x: Tensor, size: tuple[int, int], generator: torch.Generator, p_gray: float = 0.3, *, gray: Tensor | None = None
) -> Tensor:
    """Resize([B,3,h,w] -> 2*size) -> RandomGrayscale(p_gray) -> CenterCrop(size).

    Give ``x`` at the images' original size (one image) or already resized from the original
    to 2*size (a batch of images of different sizes; then no second resize happens).
    ``gray``: the grayscale draw from :func:`draw_grayscale` made beforehand (then ``generator``
    is not used)."""
    h, w = size
    if tuple(x.shape[-2:]) != (2 * h, 2 * w):
        x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False, antialias=True)
    gray = draw_grayscale(x.shape[0], generator, p_gray) if gray is None else gray
    gray_mask = gray.to(x.device).view(-1, 1, 1, 1)
    x = torch.where(gray_mask, grayscale(x).expand_as(x), x)
    top, left = (2 * h - h) // 2, (2 * w - w) // 2
    return x[:, :, top : top + h, left : left + w]


# Teacher distillation (Algorithm 3) on few images: the paper draws from all of ImageNet; a
# folder of ~1,000 images needs more variety, so each draw may be a random resized crop with a
# random horizontal flip. Psi and the teacher see the same crop, so the targets stay exact.


def draw_resized_crops(
    b: int,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    p_flip: float = 0.5,
) -> tuple[list[tuple[int, int, int, int]], Tensor]:
    """Per image of a ``size`` x ``size`` batch: a crop box (top, left, height, width) whose area
    is a share ~ U(scale) of the image and whose aspect ratio is log-uniform in ``ratio``
    (clipped to the image), and whether to flip it horizontally (bool [b])."""
    share = torch.rand(b, generator=generator) * (scale[1] - scale[0]) + scale[0]
    log_lo, log_hi = torch.log(torch.tensor(ratio[0])), torch.log(torch.tensor(ratio[1]))
    aspect = torch.exp(torch.rand(b, generator=generator) * (log_hi - log_lo) + log_lo)
    corner = torch.rand(b, 2, generator=generator)
    flip = torch.rand(b, generator=generator) < p_flip
    boxes = []
    for i in range(b):
        area = float(share[i]) * size * size
        w = min(size, max(1, round((area * float(aspect[i])) ** 0.5)))
        h = min(size, max(1, round((area / float(aspect[i])) ** 0.5)))
        top, left = int(float(corner[i, 0]) * (size - h + 1)), int(float(corner[i, 1]) * (size - w + 1))
        boxes.append((min(top, size - h), min(left, size - w), h, w))
    return boxes, flip


def resized_crops(x: Tensor, boxes: list[tuple[int, int, int, int]], flip: Tensor, out: int) -> Tensor:
    """[B, 3, S, S] -> [B, 3, out, out]: each image's box resized (bilinear, antialiased when
    shrinking) to ``out`` x ``out``, flipped horizontally where ``flip``."""
    crops = []
    for i, (top, left, h, w) in enumerate(boxes):
        c = x[i : i + 1, :, top : top + h, left : left + w]
        c = F.interpolate(c, size=(out, out), mode="bilinear", align_corners=False, antialias=h > out or w > out)
        crops.append(c.flip(-1) if bool(flip[i]) else c)
    return torch.cat(crops).clamp_(0, 1)
