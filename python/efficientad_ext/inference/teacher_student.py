"""Teacher and student PDNs for inference, with their first layers run as one convolution.

Both networks read the same normalised image and, when their first layers have the same
spec (3 -> 128 (S) or 256 (M) channels, 4x4, ReLU, 2x2 average pooling), concatenating the two
weight tensors along the output channels gives one convolution whose first half is the
teacher's layer and second half the student's: the image is read once and one kernel launch
replaces two. The remaining layers run as ``pdn_forward`` on each half (a channel slice; the
layer kernel reads it as dense channels-last).
"""

from __future__ import annotations

import torch
from torch import Tensor

from efficientad_ext import ops
from efficientad_ext.inference.cuda_options import pdn_forward as cudnn_fused_pdn_forward
from efficientad_ext.models.pdn import PDN


def first_layers_fusable(teacher: PDN, student: PDN) -> bool:
    """Whether the two first layers differ only in their weights (then they can be one conv)."""
    return teacher.specs[0] == student.specs[0]


def concat_first_layers(teacher: PDN, student: PDN) -> tuple[Tensor, Tensor]:
    """``cat([teacher_w, student_w])`` and the same of the biases: the one-convolution first
    layer. Channels-last on CUDA, the layout the ``conv2d_relu_pool`` kernel reads."""
    t, s = teacher.convolutions()[0], student.convolutions()[0]
    weight = torch.cat([t.weight.detach(), s.weight.detach()])
    bias = torch.cat([t.bias.detach(), s.bias.detach()])
    if weight.is_cuda:
        weight = weight.contiguous(memory_format=torch.channels_last)
    return weight, bias


@torch.no_grad()
def teacher_student_forward(
    x: Tensor,
    teacher: PDN,
    student: PDN,
    fuse: bool,
    first_layer: tuple[Tensor, Tensor] | None = None,
    cudnn_fusion: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(teacher(x), student(x))`` for inference, channels-last outputs.

    ``fuse``: run the first layers as one convolution (when :func:`first_layers_fusable`);
    ``first_layer``: its cached :func:`concat_first_layers` (``None``: computed here);
    ``cudnn_fusion``: the layers after it through cuDNN's fused convolution + bias + ReLU where
    un-pooled (:func:`efficientad_ext.inference.cuda_options.pdn_forward`; CUDA only).
    """

    def rest(pdn: PDN, t: Tensor, first: int) -> Tensor:
        return cudnn_fused_pdn_forward(pdn, t, first) if cudnn_fusion else pdn.fused_forward(t, first=first)

    if not fuse or not first_layers_fusable(teacher, student):
        return rest(teacher, x, 0), rest(student, x, 0)
    weight, bias = first_layer if first_layer is not None else concat_first_layers(teacher, student)
    spec = teacher.specs[0]
    # Two dense channels-last halves from one convolution: no channel-slice copy follows.
    first, second = ops.conv2d_relu_pool_split(
        x, weight, bias, spec.padding, spec.relu, spec.pool, spec.pool_padding, spec.out_channels
    )
    return rest(teacher, first, 1), rest(student, second, 1)
