"""Typed wrappers of the ``torch.ops.efficientad`` operators, with their fake (meta) kernels
for ``torch.compile`` and their autograd registrations.

Every precondition is checked once, in C++ (``csrc/checks.h``), and raises ``TypeError`` /
``ValueError`` naming the argument, for these wrappers and direct ``torch.ops`` calls alike.
The wrappers only do what is Python's own: refuse non-tensors and non-integers (the
dispatcher would report those as a schema mismatch), turn ``q`` and ``reduction`` into the
schema's types, and refuse tensors that require grad on the inference-only ops. The fake
kernels check with ``torch._check_value`` / ``torch._check_type`` what they need to compute
output shapes, so ``torch.compile`` and meta tensors fail the same way.

NaN semantics (documented, tested): a NaN anywhere in the input of :func:`quantile` makes every
requested quantile NaN (as ``torch.quantile``); NaN in the teacher/student of
:func:`hard_feature_loss` gives a NaN loss (and zero gradient); NaN in a feature map gives NaN
at the affected map pixels and a NaN image score, never a finite score that ignores it.
"""

from __future__ import annotations

from efficientad_ext.ops.anomaly_maps import AnomalyMaps, RawMaps, anomaly_maps, anomaly_maps_raw
from efficientad_ext.ops.conv_layers import conv2d_relu_pool, conv2d_relu_pool_split, conv_output_size, pdn_forward
from efficientad_ext.ops.hard_feature_loss import Reduction, hard_feature_loss
from efficientad_ext.ops.quantile import quantile
from efficientad_ext.ops.winograd_conv2d import winograd_conv2d
from efficientad_ext.ops.winograd_conv2d_trainable import (
    winograd_conv2d_trainable,
    winograd_trainable_input,
    winograd_trainable_layer,
)

__all__ = [
    "AnomalyMaps",
    "RawMaps",
    "Reduction",
    "anomaly_maps",
    "anomaly_maps_raw",
    "conv2d_relu_pool",
    "conv2d_relu_pool_split",
    "conv_output_size",
    "hard_feature_loss",
    "pdn_forward",
    "quantile",
    "winograd_conv2d",
    "winograd_conv2d_trainable",
    "winograd_trainable_input",
    "winograd_trainable_layer",
]
