"""Passes over a set of training images with a frozen network: the teacher's channel
statistics (Algorithm 1, lines 2-5), the map quantiles (lines 28-33) and the hold-out scores
behind the decision threshold."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efficientad_ext import ops
from efficientad_ext.data.batches import batches
from efficientad_ext.data.image_source import ImageSource, to_unit_float
from efficientad_ext.inference import cpu_winograd
from efficientad_ext.models.efficientad import EfficientAD


def frozen_teacher_forward(model: EfficientAD):
    """The teacher's forward for passes that never train it: on the CPU in float32/float64 with
    ``model.inference_options.cpu_winograd`` on, the Winograd plan inference uses (the teacher
    weights transformed once for the pass; about 2.5x faster than the direct convolutions on an
    AVX2 CPU); elsewhere the fused direct op. Both equal ``model.teacher(x)`` up to float32
    rounding (tests/test_cpu_inference.py: 2e-5 of the output's magnitude)."""
    options = model.inference_options
    if cpu_winograd.applies(model.device, model.dtype, options.cpu_winograd):
        return cpu_winograd.PdnPlan(model.teacher, options.cpu_winograd_tiles)
    return model.teacher.fused_forward


@torch.no_grad()
def teacher_channel_stats(
    model: EfficientAD,
    source: ImageSource,
    batch_size: int = 8,
    *,
    indices: Sequence[int] | None = None,
    reduce=None,
    keep: Tensor | None = None,
    progress_stream=None,
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the teacher's output over all images of ``source``, in one
    streaming pass with float64 sums (memory independent of the number of images). The teacher
    runs as :func:`frozen_teacher_forward` gives it (on the CPU: Winograd convolutions).

    Data-parallel training (:mod:`.distributed`) passes this rank's ``indices`` and a ``reduce``
    that sums (total, total_sq, count) over the ranks before the mean and std are taken.
    ``keep``: a float32 [n, C, h, w] tensor that receives the raw output of images 0..n-1
    (the :class:`TeacherCache`; the same pass, so caching costs no extra teacher forward).
    ``progress_stream``: where the pass's progress lines go (see :func:`batches`)."""
    c = model.config.teacher_channels
    total = torch.zeros(c, dtype=torch.float64, device=model.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=model.device)
    count = 0
    teacher = frozen_teacher_forward(model)
    for chunk, images in batches(
        source, batch_size, indices=indices, label="teacher statistics", stream=progress_stream
    ):
        x = to_unit_float(torch.stack(images), model.device)
        t = teacher(model.normalize(x))
        if keep is not None:  # the images the cache has rows for (all, or the first n)
            rows = [j for j, i in enumerate(chunk) if i < keep.shape[0]]
            keep[[chunk[j] for j in rows]] = t[rows].float()
        t = t.double()
        total += t.sum(dim=(0, 2, 3))
        total_sq += (t * t).sum(dim=(0, 2, 3))
        count += t.shape[0] * t.shape[2] * t.shape[3]
    if reduce is not None:
        total, total_sq, count = reduce(total, total_sq, count)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


@torch.no_grad()
def holdout_scores(model: EfficientAD, source: ImageSource, batch_size: int = 8) -> Tensor:
    """Image scores of ``source``'s images (float32 inference, as evaluation computes them)."""
    scores = []
    for _, images in batches(source, batch_size, label="hold-out scores"):
        x = to_unit_float(torch.stack(images), model.device)
        scores.append(model.infer(x, dtype=torch.float32).score.float().cpu())
    return torch.cat(scores)


@torch.no_grad()
def map_quantiles(model: EfficientAD, source: ImageSource, low: float, high: float, batch_size: int = 8) -> Tensor:
    """[q_st_a, q_st_b, q_ae_a, q_ae_b] over all pixels of the validation maps (exact)."""
    st_maps, ae_maps = [], []
    for _, images in batches(source, batch_size, label="map quantiles"):
        x = to_unit_float(torch.stack(images), model.device)
        st, ae = model.raw_maps(model.normalize(x))
        st_maps.append(st.flatten())
        ae_maps.append(ae.flatten())
    q_st = ops.quantile(torch.cat(st_maps), [low, high])
    q_ae = ops.quantile(torch.cat(ae_maps), [low, high])
    return torch.cat([q_st, q_ae]).float()
