"""The engine's one cache: the networks ``infer`` runs, cast to the compute dtype once.

``EfficientAD.infer`` may run in a dtype other than the model's (bfloat16 on GPUs, by
default). Casting every weight on every call would cost as much memory traffic as a small
network run, so the cast networks, the concatenated first layer and the CPU Winograd plan are
kept in one :class:`EngineCache` on the model (with the captured CUDA graphs). Invariants:

* One weight fingerprint: ``(data_ptr, _version)`` of every parameter and buffer of the model
  (every in-place write bumps ``_version``: optimiser steps, ``load_state_dict``, ``copy_``).
  A version change alone is repaired by copying the new values *into the existing* cast
  tensors, so their addresses stay stable and captured CUDA graphs stay valid; the Winograd
  plan, derived from the weights, is dropped and rebuilt. A storage change (``model.to(...)``,
  replaced parameters) rebuilds the entry with a new :attr:`InferenceNetworks.generation`,
  which drops the CUDA graphs that point at the old tensors.
* On CUDA every convolution weight is stored channels-last: the layout the ``conv2d_relu_pool``
  kernel wants, and the one that makes cuDNN run the autoencoder in NHWC (tensor cores). On
  the CPU in the model's own dtype the model's networks are used as they are (no copy).
* Checking the cache is host work only (no device synchronisation): ~50 tensors' metadata.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from efficientad_ext.inference.teacher_student import concat_first_layers
from efficientad_ext.models.pdn import PDN

if TYPE_CHECKING:
    from efficientad_ext.models.efficientad import EfficientAD

_CACHE_ATTR = "_inference_cache"
_generation = itertools.count(1)
_BF16_SUPPORT: dict[int, bool] = {}  # per CUDA device index, queried once
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

Fingerprint = tuple[tuple[int, int], ...]


@dataclass
class InferenceNetworks:
    """The networks ``infer`` runs, in ``dtype`` on the model's device."""

    teacher: PDN
    student: PDN
    autoencoder: nn.Module
    first_layer: tuple[Tensor, Tensor]  # concat_first_layers(teacher, student)
    dtype: torch.dtype
    generation: int
    owns_copies: bool  # False: the model's own modules (nothing to refresh)
    fingerprint: Fingerprint
    cpu_plan: Any = None  # cpu_winograd.CpuWinogradPlan, built on first use


@dataclass
class EngineCache:
    """Everything the engine keeps on one model (``model.__dict__``, not a module attribute,
    so ``state_dict`` and ``deepcopy`` of the model never see it)."""

    networks: dict[torch.dtype, InferenceNetworks] = field(default_factory=dict)
    graphs: OrderedDict = field(default_factory=OrderedDict)  # cuda_graphs.GraphKey -> CapturedInfer


def cache_of(model: EfficientAD) -> EngineCache:
    return model.__dict__.setdefault(_CACHE_ATTR, EngineCache())


def clear(model: EfficientAD) -> None:
    """Drops every cached network, plan and CUDA graph of ``model`` (rebuilt on the next call)."""
    model.__dict__.pop(_CACHE_ATTR, None)


def default_dtype(model: EfficientAD) -> torch.dtype:
    """The compute dtype of ``infer(dtype=None)``: bfloat16 on a CUDA device that supports it
    (when the model is float32), otherwise the model's own dtype."""
    device = model.device
    if device.type == "cuda" and model.dtype == torch.float32:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _BF16_SUPPORT:
            with torch.cuda.device(index):
                _BF16_SUPPORT[index] = bool(torch.cuda.is_bf16_supported())
        if _BF16_SUPPORT[index]:
            return torch.bfloat16
    return model.dtype


def resolve_dtype(model: EfficientAD, dtype: torch.dtype | str | None) -> torch.dtype:
    """Validates ``infer``'s ``dtype`` argument; ``None`` means :func:`default_dtype`."""
    if dtype is None:
        return default_dtype(model)
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or a torch.dtype, got {dtype!r}")
        dtype = DTYPE_NAMES[dtype]
    if dtype not in DTYPE_NAMES.values():
        raise TypeError(
            f"dtype must be torch.float32, bfloat16, float16 or float64 (or None for the default), got {dtype!r}"
        )
    return dtype


def weight_fingerprint(model: EfficientAD) -> Fingerprint:
    # Every parameter and buffer, the model's own (teacher_mean/std, quantiles, image mean/std:
    # read directly by infer and by captured graphs) included.
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


def _cast_copy(module: nn.Module, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    clone = copy.deepcopy(module).to(dtype=dtype).eval()
    clone.requires_grad_(False)
    if channels_last:
        for conv in clone.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return clone


def _build(model: EfficientAD, dtype: torch.dtype, fingerprint: Fingerprint) -> InferenceNetworks:
    on_cuda = model.device.type == "cuda"
    owns = on_cuda or dtype != model.dtype
    if owns:
        # Channels-last weights make cuDNN run the autoencoder NHWC as well (its output then
        # is channels-last; anomaly_maps reads features with any strides).
        teacher, student, autoencoder = (
            _cast_copy(m, dtype, on_cuda) for m in (model.teacher, model.student, model.autoencoder)
        )
    else:
        teacher, student, autoencoder = model.teacher, model.student, model.autoencoder
    first_layer = concat_first_layers(teacher, student)
    return InferenceNetworks(teacher, student, autoencoder, first_layer, dtype, next(_generation), owns, fingerprint)


@torch.no_grad()
def _refresh(nets: InferenceNetworks, model: EfficientAD) -> None:
    """Copies the model's current values into the cached tensors, in place (same addresses)."""
    if nets.owns_copies:
        pairs = ((model.teacher, nets.teacher), (model.student, nets.student), (model.autoencoder, nets.autoencoder))
        for src_net, dst_net in pairs:
            sources = itertools.chain(src_net.parameters(), src_net.buffers())
            for src, dst in zip(sources, itertools.chain(dst_net.parameters(), dst_net.buffers())):
                dst.copy_(src)
    for cached, current in zip(nets.first_layer, concat_first_layers(nets.teacher, nets.student)):
        cached.copy_(current)
    nets.cpu_plan = None


def networks_for(model: EfficientAD, dtype: torch.dtype) -> InferenceNetworks:
    """The cached inference networks of ``model`` in ``dtype`` (built or refreshed if needed)."""
    cache = cache_of(model).networks
    fingerprint = weight_fingerprint(model)
    nets = cache.get(dtype)
    if nets is not None and nets.fingerprint == fingerprint:
        return nets
    if nets is not None and [p for p, _ in nets.fingerprint] == [p for p, _ in fingerprint]:
        _refresh(nets, model)
        nets.fingerprint = weight_fingerprint(model)  # the refresh itself does not touch the sources
        return nets
    nets = _build(model, dtype, fingerprint)
    cache[dtype] = nets
    return nets
