"""The frozen teacher's output on every training image, computed once (:class:`TeacherCache`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext.models.efficientad import EfficientAD


class TeacherCache:
    """The frozen teacher's raw output on every training image, computed once.

    Algorithm 1 runs the teacher on the drawn training image at every step. The teacher is
    frozen and that branch never augments the image (the preloaded image, resized once), so
    the output per image is a constant: it is computed in the teacher-statistics pass (the
    fused float32 op, batches of 8 in index order: the same values on every start and resume,
    which keeps resume bit-for-bit) and looked up per step, saving one teacher forward per
    image per step. The teacher still runs every step on the augmented image.

    ``TrainConfig.teacher_cache_bytes`` bounds its memory (``C * h * w * 4`` bytes an image): when
    not every image fits, the first ``capacity`` images (by index) are cached and a batch with
    any other image runs the teacher as without a cache.
    """

    def __init__(self, model: EfficientAD, count: int, capacity: int | None = None) -> None:
        h, w = model.feature_size
        self.capacity = count if capacity is None else max(0, min(count, capacity))
        self.outputs = torch.empty(self.capacity, model.config.teacher_channels, h, w, device=model.device)

    @staticmethod
    def bytes_needed(model: EfficientAD, count: int) -> int:
        h, w = model.feature_size
        return count * model.config.teacher_channels * h * w * 4

    def holds(self, indices: Sequence[int]) -> bool:
        """Whether every image of ``indices`` is cached."""
        return all(i < self.capacity for i in indices)

    def __getitem__(self, indices: Sequence[int]) -> Tensor:
        return self.outputs[list(indices)]
