"""Teacher and student PDNs for inference, with their first layers run as one convolution.

Both networks read the same normalised image, and their first layers have the same shape
(3 -> 128 (S) or 256 (M) channels, 4x4, ReLU, 2x2 average pooling): concatenating the two
weight tensors along the output channels gives one convolution with twice the output
channels, whose first half is the teacher's layer and second half the student's. The
image is then read once and one kernel launch replaces two. ``conv2d_relu_pool_split`` writes
the two halves as two dense channels-last tensors, and the remaining layers run as
``pdn_forward`` on each (no channel-slice copy).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .pdn import PDN

# Per device type, whether the first layers run as one convolution. CPU: off, measured not
# faster on 2 cores (EfficientAD-S, batch 1, oneDNN direct convolutions: separate/one-conv time
# 0.92-1.03 over two noisy runs): the wider convolution saves no memory traffic and the split
# halves cost one copy each. CUDA: on (one launch instead of two; the image read once);
# benchmarks/gpu_table.py measures both ways on the GPU.
FUSE_FIRST_LAYER = {"cpu": False, "cuda": True}


def set_fuse_first_layer(device_type: str, enabled: bool) -> None:
    """Turns the one-convolution first layer on or off for ``device_type`` ("cpu", "cuda").
    CUDA graphs already captured keep the path they were captured with
    (``efficientad_ext.cuda_graph.clear(model)`` drops them)."""
    if device_type not in FUSE_FIRST_LAYER:
        raise ValueError(f"device_type must be one of {sorted(FUSE_FIRST_LAYER)}, got {device_type!r}")
    FUSE_FIRST_LAYER[device_type] = bool(enabled)


def first_layers_fusable(teacher: PDN, student: PDN) -> bool:
    """Whether the two first layers differ only in their weights (then they can be one conv)."""
    return teacher.specs[0] == student.specs[0]


@torch.no_grad()
def teacher_student_forward(
    x: Tensor, teacher: PDN, student: PDN, first_weight: Tensor | None = None, first_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(teacher(x), student(x))`` for inference, channels-last outputs.

    ``first_weight`` / ``first_bias``: the concatenated first-layer weights
    ``cat([teacher_w, student_w])`` / biases (cached by :mod:`efficientad_ext.inference_weights`);
    ``None`` computes them here. Runs two separate ``pdn_forward`` calls instead when the
    first layers are not fusable or :data:`FUSE_FIRST_LAYER` is off for ``x``'s device type.
    """
    if not FUSE_FIRST_LAYER.get(x.device.type, False) or not first_layers_fusable(teacher, student):
        return teacher.fused_forward(x), student.fused_forward(x)
    if first_weight is None or first_bias is None:
        t0, s0 = teacher.convolutions()[0], student.convolutions()[0]
        first_weight = torch.cat([t0.weight.detach(), s0.weight.detach()])
        first_bias = torch.cat([t0.bias.detach(), s0.bias.detach()])
    spec = teacher.specs[0]
    first, second = ops.conv2d_relu_pool_split(
        x, first_weight, first_bias, spec.padding, spec.relu, spec.pool, spec.pool_padding, spec.out_channels
    )
    return _rest_forward(first, teacher), _rest_forward(second, student)


def _rest_forward(h: Tensor, pdn: PDN) -> Tensor:
    """The PDN's layers after the first, on the first layer's output ``h`` (one op call)."""
    return torch.ops.efficientad.pdn_forward(h, *ops.pdn_layer_arguments(pdn.convolutions()[1:], pdn.specs[1:]))
