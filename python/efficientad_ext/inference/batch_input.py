"""Image batches in every form a user passes them, made into the networks' input (Algorithm 2's
first step: :func:`prepare`), and the range check on float images.

Float images must lie in [0, 1]. Values up to :data:`FLOAT_TOLERANCE` outside that range are
accepted unchanged (resampling filters such as bicubic overshoot a little at edges); anything
further out, and NaN or infinity, is refused: such a batch is almost always 0-255 values or an
already normalised image (about -2.1 to 2.6 with ImageNet statistics), and would score as
garbage rather than fail.

Layouts: a float tensor is [B, C, H, W] (or [C, H, W]); a uint8 tensor may also be
[B, H, W, C] where its shape cannot be read as [B, C, H, W] (see :func:`_channels_first`).
Images smaller than :data:`MIN_INPUT_SIDE` on a side are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from efficientad_ext.data.images import MIN_INPUT_SIDE, pil_to_float_array

if TYPE_CHECKING:  # type annotations only; the model calls this module
    from efficientad_ext.models.efficientad import EfficientAD

FLOAT_TOLERANCE = 0.5
LOW, HIGH = 0.0 - FLOAT_TOLERANCE, 1.0 + FLOAT_TOLERANCE


def check_float_range(x: Tensor, what: str) -> None:
    """Raises ValueError naming ``what`` unless every value of float ``x`` is in [LOW, HIGH].

    Reads the values back to the host, so callers skip it for CUDA tensors (no device sync)."""
    lo, hi = (float(v) for v in x.aminmax())
    # "not (a and b)" instead of "a or b": a NaN fails every comparison and must be refused.
    if not (lo >= LOW and hi <= HIGH):
        if lo != lo or hi != hi:
            raise ValueError(f"{what}: float images must be in [0, 1], got NaN values")
        hint = "divide by 255 or pass uint8" if hi > HIGH else "pass images in [0, 1], not normalised ones"
        raise ValueError(
            f"{what}: float images must be in [0, 1] (tolerance {FLOAT_TOLERANCE:g}), got values in [{lo:g}, {hi:g}]: {hint}"
        )


def prepare(model: EfficientAD, batch: Tensor | Sequence[Any]) -> tuple[Tensor, tuple[int, int]]:
    """The normalised network input [B, 3, H, W] of ``batch`` on the model's device and dtype,
    resized to ``model.config.image_size``, and the input's (H, W); see ``EfficientAD.prepare``."""
    x = batch_tensor(batch)
    in_size = (int(x.shape[-2]), int(x.shape[-1]))
    x = x.to(model.device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.to(model.dtype) / 255.0
    else:
        x = x.to(model.dtype)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if in_size != model.config.image_size:
        x = F.interpolate(x, size=model.config.image_size, mode="bilinear", align_corners=False, antialias=True)
    return model.normalize(x), in_size


def _channels_first(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x`` [B, C, H, W]. A float tensor is always read as [B, C, H, W]: its layout cannot be
    told from its shape ((1, 4, 64, 3) could be either). A uint8 tensor is read as [B, H, W, C]
    only where [B, C, H, W] is impossible: its dim 1 is not a channel count and its last dim is
    (the layout image libraries and numpy give)."""
    if x.dtype == torch.uint8 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        hint = (
            "float tensors are read as [B, C, H, W]: permute a [B, H, W, C] one with x.permute(0, 3, 1, 2)"
            if x.is_floating_point() and x.shape[-1] in (1, 3)
            else "drop an alpha channel first"
        )
        raise ValueError(
            f"batch must have 3 (RGB) or 1 (grayscale) channels, as [B, 3, H, W] (or, for uint8, [B, H, W, 3]); "
            f"got shape {shape} ({hint})"
        )
    return x


def check_image_side(height: int, width: int, what: str) -> None:
    """Refuses images with a side below :data:`MIN_INPUT_SIDE` (the PDN's receptive field)."""
    if height < MIN_INPUT_SIDE or width < MIN_INPUT_SIDE:
        raise ValueError(
            f"{what}: images must be at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} pixels (one receptive field of the "
            f"networks), got {height}x{width}"
        )


def batch_tensor(batch: Tensor | Sequence[Any]) -> Tensor:
    """A [B, C, H, W] tensor (C 1 or 3) from any supported batch form, on its own device."""
    if isinstance(batch, Tensor):
        x = batch
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(
                f"batch must be [B, 3, H, W] (or uint8 [B, H, W, 3], or one image without B), got shape "
                f"{tuple(batch.shape)}"
            )
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"batch must be uint8 (0-255) or floating point (0-1), got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"batch must not be empty, got shape {tuple(batch.shape)}")
        x = _channels_first(x, tuple(batch.shape))
        check_image_side(int(x.shape[2]), int(x.shape[3]), "batch")
        if x.is_floating_point() and x.device.type == "cpu":
            # Cheap on the CPU (no device sync): catch 0-255 or normalised floats instead of returning garbage.
            check_float_range(x, "batch")
        return x
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) > 0:
        images = [image_tensor(item, i) for i, item in enumerate(batch)]
        sizes = {tuple(im.shape[-2:]) for im in images}
        if len(sizes) > 1:
            raise ValueError(
                f"all images of one batch must have the same size to return maps at that size, got {sorted(sizes)}"
            )
        return torch.stack(images)
    raise TypeError(
        f"batch must be a tensor or a non-empty list of PIL images / numpy arrays, got {type(batch).__name__}"
    )


def image_tensor(item: Any, index: int) -> Tensor:
    """[3, H, W] float in [0, 1] from a PIL image or a numpy array (HWC/HW, uint8 or float)."""
    if hasattr(item, "convert") and hasattr(
        item, "size"
    ):  # PIL.Image: the CLI's conversion (16-bit, float, palette modes)
        item = pil_to_float_array(item, f"batch[{index}]")
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"batch[{index}] must be a PIL image or numpy array, got {type(item).__name__}")
    a = item
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"batch[{index}] must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"batch[{index}] must not be empty, got shape {a.shape}")
    check_image_side(a.shape[0], a.shape[1], f"batch[{index}]")
    a = a[:, :, :3]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        t = torch.tensor(a).permute(2, 0, 1).float() / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        t = torch.tensor(a, dtype=torch.float32).permute(2, 0, 1)
        check_float_range(t, f"batch[{index}]")
    else:
        raise TypeError(f"batch[{index}] must be uint8 or float, got {a.dtype}")
    return t
