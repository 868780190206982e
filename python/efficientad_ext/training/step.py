"""One optimisation step of Algorithm 1 (:class:`TrainStep`)."""

from __future__ import annotations

import torch
from torch import Tensor

from efficientad_ext import ops
from efficientad_ext.models.efficientad import EfficientAD
from efficientad_ext.training.augment import color_jitter_one_of
from efficientad_ext.training.config import TrainConfig
from efficientad_ext.training.precision import autocast, torch_memory_format


class TrainStep:
    """One optimisation step of Algorithm 1 (lines 6-27) on a batch of images.

    ``precision`` ("float32" or "bfloat16", see :mod:`efficientad_ext.training.precision`): the
    networks' forward passes under bf16 autocast or not. The weights, Adam's state, the losses
    and their reductions are float32 either way: every network output is cast to float32
    before the losses, so the hard-feature quantile is taken exactly on float32 differences.

    ``memory_format`` ("contiguous" or "channels_last", see
    :func:`efficientad_ext.training.precision.resolve_memory_format`): the layout of the three networks'
    weights and of every image batch the step feeds them. Channels-last converts the model's
    parameters in place (their values are unchanged; the model file and the training state are
    written contiguous either way).
    """

    def __init__(
        self,
        model: EfficientAD,
        config: TrainConfig,
        generator: torch.Generator,
        precision: str = "float32",
        memory_format: str = "contiguous",
    ) -> None:
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16 (resolve 'auto' first), got {precision!r}")
        if memory_format not in ("contiguous", "channels_last"):
            raise ValueError(
                f"memory_format must be contiguous or channels_last (resolve 'auto' first), got {memory_format!r}"
            )
        self.model, self.config, self.generator, self.precision = model, config, generator, precision
        self.memory_format = torch_memory_format(memory_format)
        for net in (model.teacher, model.student, model.autoencoder):
            net.to(memory_format=self.memory_format)
        params = list(model.student.parameters()) + list(model.autoencoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        # The modules the step runs; data-parallel training replaces them by their
        # DistributedDataParallel wrappers (same parameters, gradients averaged over ranks).
        self.student, self.autoencoder = model.student, model.autoencoder

    def __call__(
        self,
        step: int,
        images: Tensor,
        penalty: Tensor | None,
        *,
        jitter: tuple[Tensor, Tensor] | None = None,
        teacher_images: Tensor | None = None,
    ) -> dict[str, float]:
        """images: float [B, 3, H, W] in [0, 1]; penalty: the same for ImageNet images or None;
        jitter: the autoencoder branch's augmentation draws made beforehand (else drawn here);
        teacher_images: the frozen teacher's raw output on ``images`` when it is cached
        (:class:`TeacherCache`), else the teacher runs on them here."""
        model, cfg = self.model, self.config
        c = model.config.teacher_channels
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        b = images.shape[0]
        augmented = color_jitter_one_of(images, self.generator, draws=jitter)
        x = model.normalize(images).contiguous(memory_format=self.memory_format)
        x_aug = model.normalize(augmented).contiguous(memory_format=self.memory_format)
        mean, std = model.teacher_mean.view(1, c, 1, 1), model.teacher_std.view(1, c, 1, 1)
        with torch.no_grad(), autocast(self.precision, model.device):
            if teacher_images is None:
                teacher = model.teacher(torch.cat([x, x_aug])).float()
            else:
                teacher = torch.cat([teacher_images, model.teacher(x_aug).float()])
            teacher = (teacher - mean) / std
        # The student's batch is [images, penalty images, augmented images]: the first two groups
        # are read on its first C output channels only, the last on its last C only, so its last
        # layer computes just those (PDN.forward's heads; the gradients are the full layer's).
        parts = [x] if penalty is None else [x, model.normalize(penalty).contiguous(memory_format=self.memory_format)]
        first = sum(p.shape[0] for p in parts)
        with autocast(self.precision, model.device):
            student_first, student_aug = self.student(torch.cat([*parts, x_aug]), heads=((first, 0, c), (b, c, 2 * c)))
            ae = self.autoencoder(x_aug, model.feature_size)
        student_first, student_aug, ae = student_first.float(), student_aug.float(), ae.float()

        hard = ops.hard_feature_loss(teacher[:b], student_first[:b], cfg.p_hard, cfg.reduction)
        pen = (student_first[b:] ** 2).mean() if penalty is not None else student_first.new_zeros(())
        loss_ae = ((teacher[b:] - ae) ** 2).mean()
        loss_stae = ((ae - student_aug) ** 2).mean()
        loss = hard + pen + loss_ae + loss_stae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "hard": hard.item(),
            "penalty": pen.item(),
            "ae": loss_ae.item(),
            "stae": loss_stae.item(),
        }
