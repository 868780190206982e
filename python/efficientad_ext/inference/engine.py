"""Algorithm 2 for one batch: prepare the input, run the three networks, fuse the maps.

:func:`infer` picks, in this order: the cached networks in the compute dtype
(:mod:`.networks`), CUDA-graph replay for a batch already on the model's GPU
(:mod:`.cuda_graphs`), the CPU Winograd plan (:mod:`.cpu_winograd`) or the fused
``pdn_forward`` PDNs with the one-convolution first layer (:mod:`.teacher_student`); then the
fused ``anomaly_maps`` op. The model is used through its public attributes only, so this
package imports nothing from :mod:`efficientad_ext.models.efficientad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from efficientad_ext import ops
from efficientad_ext.inference import batch_input, cpu_winograd, cuda_graphs, cuda_options
from efficientad_ext.inference.networks import InferenceNetworks, cache_of, networks_for, resolve_dtype
from efficientad_ext.inference.result import InferenceResult
from efficientad_ext.inference.teacher_student import teacher_student_forward
from efficientad_ext.ops import reference

if TYPE_CHECKING:
    from efficientad_ext.inference.options import InferenceOptions
    from efficientad_ext.models.efficientad import EfficientAD


@torch.no_grad()
def infer(
    model: EfficientAD,
    batch: Tensor | Sequence[Any],
    dtype: torch.dtype | str | None,
    cuda_graph: bool,
    branches: bool = False,
) -> InferenceResult:
    """The body of :meth:`EfficientAD.infer` (see there for the arguments)."""
    nets = networks_for(model, resolve_dtype(model, dtype))
    options = model.inference_options
    if branches:  # eager: the graphs capture the fused maps only
        return _eager(model, batch, nets, options, branches=True)
    if cuda_graph and cuda_graphs.usable(model, batch):
        graphs = cache_of(model).graphs
        return cuda_graphs.run_graphed(
            graphs, batch, nets.dtype, nets.generation, options, lambda b: _eager(model, b, nets, options)
        )
    return _eager(model, batch, nets, options)


def _eager(
    model: EfficientAD,
    batch: Tensor | Sequence[Any],
    nets: InferenceNetworks,
    options: InferenceOptions,
    branches: bool = False,
) -> InferenceResult:
    x, in_size = batch_input.prepare(model, batch)
    teacher, student, autoencoder = _networks(model, x.to(nets.dtype), nets, options)
    out = ops.anomaly_maps(
        teacher, model.teacher_mean, model.teacher_std, student, autoencoder, model.quantiles, in_size, model.map_border
    )
    if not branches:
        return InferenceResult(out.anomaly_map, out.score)
    return InferenceResult(
        out.anomaly_map,
        out.score,
        branches=branch_maps(
            ops.anomaly_maps_raw(teacher, model.teacher_mean, model.teacher_std, student, autoencoder),
            model.quantiles,
            in_size,
            model.map_border,
        ),
    )


def _networks(
    model: EfficientAD, x: Tensor, nets: InferenceNetworks, options: InferenceOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher, student and autoencoder outputs of the prepared input ``x`` (compute dtype)."""
    if cpu_winograd.applies(x.device, nets.dtype, options.cpu_winograd):
        return cpu_winograd.plan_for(nets, options.cpu_winograd_tiles).forward(x, model.feature_size)
    fuse, cudnn = options.fuses_first_layer(x.device.type), options.cudnn_fusion and x.is_cuda
    # The CUDA switches (side stream, cuDNN fusion; off by default): inference/cuda_options.py.
    return cuda_options.forward_with_pdns(
        lambda: teacher_student_forward(x, nets.teacher, nets.student, fuse, nets.first_layer, cudnn),
        nets.autoencoder,
        x,
        model.feature_size,
        cudnn_fusion=cudnn,
        side_stream=options.autoencoder_side_stream,
    )


@torch.no_grad()
def infer_each(model: EfficientAD, images: Sequence[Any], dtype: torch.dtype | str | None) -> list[InferenceResult]:
    """Algorithm 2 for images of *different* sizes in one network call: each image is prepared
    on its own (resized to the model's size, as :func:`infer` does), the networks run once on
    the stacked batch, and each image's map is made at its own size by the fused maps op. So
    every image gets the values :func:`infer` gives it alone, and the networks, the cost,
    still run batched. ``images``: each one image as :func:`infer` takes a batch of one
    ([3, H, W] / [1, 3, H, W] tensors, PIL images, arrays)."""
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    nets = networks_for(model, resolve_dtype(model, dtype))
    prepared = [batch_input.prepare(model, [im] if not isinstance(im, Tensor) else _one(im)) for im in images]
    teacher, student, autoencoder = _networks(model, torch.cat([x for x, _ in prepared]).to(nets.dtype), nets,
                                              model.inference_options)  # fmt: skip
    results = []
    for i, (_, size) in enumerate(prepared):
        part = slice(i, i + 1)
        out = ops.anomaly_maps(teacher[part], model.teacher_mean, model.teacher_std, student[part],
                               autoencoder[part], model.quantiles, size, model.map_border)  # fmt: skip
        results.append(InferenceResult(out.anomaly_map, out.score))
    return results


def _one(image: Tensor) -> Tensor:
    """A single image tensor as a batch of one ([3, H, W] -> [1, 3, H, W])."""
    if image.dim() == 3:
        return image.unsqueeze(0)
    if image.dim() == 4 and image.shape[0] == 1:
        return image
    raise ValueError(f"each image must be one image, [3, H, W] or [1, 3, H, W], got shape {tuple(image.shape)}")


def branch_maps(raw: tuple[Tensor, Tensor], quantiles: Tensor, size: tuple[int, int], border: int) -> dict[str, Tensor]:
    """The local and global maps of Algorithm 2 each on its own, as the fused ``anomaly_maps``
    op computes them before their 0.5 / 0.5 sum: zero border, bilinear resize to ``size``,
    quantile normalisation ``0.1 (m - q_a) / (q_b - q_a)``."""
    q = quantiles.float()
    out = {}
    for name, m, qa, qb in (("local", raw[0], q[0], q[1]), ("global", raw[1], q[2], q[3])):
        out[name] = reference.normalize_map(reference.pad_and_resize(m.float(), border, size), qa, qb)
    return out
