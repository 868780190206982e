"""Inference copies of a model's networks in the compute dtype, cast once and cached.

``EfficientAD.infer`` may run in a dtype other than the model's (bfloat16 on GPUs, by
default). Casting every weight on every call would cost as much memory traffic as a small
network run, so the cast networks are kept on the model and reused. Invariants:

* A cache entry is valid while every parameter and buffer of the model keeps its storage
  (``data_ptr``) and version counter (``_version``; every in-place write bumps it:
  optimiser steps, ``load_state_dict``, ``copy_``). A version change alone is repaired by
  copying the new values *into the existing* cast tensors, so their addresses stay stable
  and captured CUDA graphs stay valid. A storage change (``model.to(...)``, replaced
  parameters) rebuilds the entry and bumps :attr:`InferenceNetworks.generation`, which the
  CUDA-graph cache uses to drop graphs that point at the old tensors.
* On CUDA every convolution weight is stored channels-last: the layout the ``conv2d_relu_pool``
  kernel wants (no weight is re-laid-out per call), and the one that makes cuDNN run the
  autoencoder in NHWC, the tensor cores' layout. On CPU in the model's own dtype the
  model's networks are used as they are (no copy, no extra memory).
* The teacher's and student's first convolutions read the same image: they are concatenated
  into one convolution (:mod:`efficientad_ext.pdn_pair`), cached here as well.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .pdn import PDN

if TYPE_CHECKING:
    from .model import EfficientAD

_CACHE_ATTR = "_inference_networks"
_generation = itertools.count(1)
_BF16_SUPPORT: dict[int, bool] = {}


@dataclass
class InferenceNetworks:
    """The networks ``infer`` runs, in ``dtype`` on the model's device."""

    teacher: PDN
    student: PDN
    autoencoder: nn.Module
    first_weight: Tensor  # teacher's and student's first conv weights, concatenated on dim 0
    first_bias: Tensor
    dtype: torch.dtype
    generation: int
    owns_copies: bool  # False: the model's own modules (nothing to refresh)
    fingerprint: tuple[tuple[int, int], ...]


def default_dtype(model: EfficientAD) -> torch.dtype:
    """The compute dtype of ``infer(dtype=None)``: bfloat16 on a CUDA device that supports it
    (when the model is float32), otherwise the model's own dtype."""
    device = model.device
    if device.type == "cuda" and model.dtype == torch.float32:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _BF16_SUPPORT:  # queried once per device (a device-properties call)
            with torch.cuda.device(index):
                _BF16_SUPPORT[index] = bool(torch.cuda.is_bf16_supported())
        if _BF16_SUPPORT[index]:
            return torch.bfloat16
    return model.dtype


def resolve_dtype(model: EfficientAD, dtype: torch.dtype | str | None) -> torch.dtype:
    """Validates ``infer``'s ``dtype`` argument; ``None`` means :func:`default_dtype`."""
    if dtype is None:
        return default_dtype(model)
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in names.values():
        raise TypeError(f"dtype must be torch.float32, bfloat16, float16 or float64 (or None for the default), got {dtype!r}")
    return dtype


def _sources(model: EfficientAD) -> list[Tensor]:
    # Every parameter and buffer, the model's own (teacher_mean/std, quantiles, image
    # mean/std: read directly by infer and by captured graphs) included.
    return list(itertools.chain(model.parameters(), model.buffers()))


def _fingerprint(tensors: list[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _cast_copy(module: nn.Module, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    clone = copy.deepcopy(module).to(dtype=dtype).eval()
    clone.requires_grad_(False)
    if channels_last:
        for conv in clone.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return clone


def _first_layer(teacher: PDN, student: PDN) -> tuple[Tensor, Tensor]:
    t, s = teacher.convolutions()[0], student.convolutions()[0]
    weight = torch.cat([t.weight.detach(), s.weight.detach()])
    bias = torch.cat([t.bias.detach(), s.bias.detach()])
    if weight.is_cuda:
        weight = weight.contiguous(memory_format=torch.channels_last)
    return weight, bias


def _build(model: EfficientAD, dtype: torch.dtype, fingerprint: tuple[tuple[int, int], ...]) -> InferenceNetworks:
    on_cuda = model.device.type == "cuda"
    owns = on_cuda or dtype != model.dtype
    if owns:
        teacher = _cast_copy(model.teacher, dtype, on_cuda)
        student = _cast_copy(model.student, dtype, on_cuda)
        # Channels-last weights make cuDNN run the autoencoder NHWC as well (its output
        # then is channels-last; anomaly_maps reads features with any strides).
        autoencoder = _cast_copy(model.autoencoder, dtype, on_cuda)
    else:
        teacher, student, autoencoder = model.teacher, model.student, model.autoencoder
    weight, bias = _first_layer(teacher, student)
    return InferenceNetworks(teacher, student, autoencoder, weight, bias, dtype, next(_generation), owns, fingerprint)


@torch.no_grad()
def _refresh(nets: InferenceNetworks, model: EfficientAD) -> None:
    """Copies the model's current values into the cached tensors, in place (same addresses)."""
    if nets.owns_copies:
        for src_net, dst_net in ((model.teacher, nets.teacher), (model.student, nets.student), (model.autoencoder, nets.autoencoder)):
            for src, dst in zip(itertools.chain(src_net.parameters(), src_net.buffers()), itertools.chain(dst_net.parameters(), dst_net.buffers())):
                dst.copy_(src)
    weight, bias = _first_layer(nets.teacher, nets.student)
    nets.first_weight.copy_(weight)
    nets.first_bias.copy_(bias)


def networks_for(model: EfficientAD, dtype: torch.dtype) -> InferenceNetworks:
    """The cached inference networks of ``model`` in ``dtype`` (built or refreshed if needed).
    Host-side work only (no device synchronisation): a fingerprint of ~50 tensors' metadata."""
    cache: dict[torch.dtype, InferenceNetworks] = model.__dict__.setdefault(_CACHE_ATTR, {})
    sources = _sources(model)
    fingerprint = _fingerprint(sources)
    nets = cache.get(dtype)
    if nets is not None and nets.fingerprint == fingerprint:
        return nets
    if nets is not None and [p for p, _ in nets.fingerprint] == [p for p, _ in fingerprint]:
        _refresh(nets, model)
        nets.fingerprint = _fingerprint(sources)  # the refresh itself does not touch the sources
        return nets
    nets = _build(model, dtype, fingerprint)
    cache[dtype] = nets
    return nets


def clear(model: EfficientAD) -> None:
    """Drops the cached inference networks (they are rebuilt on the next call)."""
    model.__dict__.pop(_CACHE_ATTR, None)
