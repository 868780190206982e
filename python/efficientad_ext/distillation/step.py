"""One distillation step (:class:`DistillStep`), the crop mask it applies, and the held-out loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext.data.image_source import to_unit_float
from efficientad_ext.distillation.config import CROP_MARGIN_CELLS, PDN_STRIDE, DistillConfig
from efficientad_ext.models.pdn import PDN
from efficientad_ext.training.precision import autocast


def crop_valid_mask(cell_y: int, cell_x: int, cells: int, grid: int, device: torch.device) -> Tensor:
    """[cells, cells] bool: which output cells of a crop starting at cell (cell_y, cell_x)
    equal the whole image's cells (see the module docstring)."""
    m = CROP_MARGIN_CELLS
    r = torch.arange(cells, device=device)

    def axis(start: int) -> Tensor:
        lo = r >= m if start > 0 else torch.ones_like(r, dtype=torch.bool)
        hi = r < cells - m if start + cells < grid else torch.ones_like(r, dtype=torch.bool)
        return lo & hi

    return axis(cell_y)[:, None] & axis(cell_x)[None, :]


class DistillStep:
    """One optimisation step of Algorithm 3 (lines 5-17) on a batch."""

    def __init__(
        self, teacher: PDN, config: DistillConfig, image_mean: Tensor, image_std: Tensor, precision: str = "float32"
    ) -> None:
        self.teacher = teacher
        self.config = config
        self.precision = precision  # resolved: the teacher's forward under bf16 autocast or not; the loss is float32
        self.image_mean, self.image_std = image_mean, image_std
        self.optimizer = torch.optim.Adam(teacher.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def loss(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> Tensor:
        """images_256 [B, 3, 256, 256] in [0, 1]; targets [B, C, 64, 64]; crops: per image the
        crop's top-left output cell (None: whole images)."""
        x = (images_256 - self.image_mean) / self.image_std
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if crops is None:
            return ((self._forward(x) - targets) ** 2).mean()
        size, grid = self.config.crop_size, targets.shape[-1]
        cells = size // PDN_STRIDE
        windows = torch.stack(
            [
                x[i, :, PDN_STRIDE * cy : PDN_STRIDE * cy + size, PDN_STRIDE * cx : PDN_STRIDE * cx + size]
                for i, (cy, cx) in enumerate(crops)
            ]
        )
        out = self._forward(windows)
        target = torch.stack([targets[i, :, cy : cy + cells, cx : cx + cells] for i, (cy, cx) in enumerate(crops)])
        mask = torch.stack([crop_valid_mask(cy, cx, cells, grid, x.device) for cy, cx in crops]).unsqueeze(1)
        sq = ((out - target) ** 2) * mask
        return sq.sum() / (mask.sum() * out.shape[1])

    def _forward(self, x: Tensor) -> Tensor:
        with autocast(self.precision, x.device):
            return self.teacher(x).float()

    def __call__(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images_256, targets, crops)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


@torch.no_grad()
def holdout_loss(
    teacher: PDN, images_256: Tensor, targets: Tensor, image_mean: Tensor, image_std: Tensor, batch_size: int = 8
) -> float:
    """Mean squared error of the teacher on whole held-out images (Algorithm 3's loss)."""
    was_training = teacher.training
    teacher.eval()
    total, n = 0.0, 0
    for i in range(0, images_256.shape[0], batch_size):
        x = (to_unit_float(images_256[i : i + batch_size], image_mean.device) - image_mean) / image_std
        t = targets[i : i + batch_size].to(x.device).float()
        total += float(((teacher(x) - t) ** 2).sum())
        n += t.numel()
    teacher.train(was_training)
    return total / max(n, 1)
