"""Wide ResNet-101-2 (Zagoruyko & Komodakis; torchvision's ``wide_resnet101_2``) up to
``layer3``: the layers PatchCore, and the EfficientAD paper's distillation, take features from.

Parameter names are torchvision's, so its ImageNet weight file (``wide_resnet101_2-*.pth``,
V1 or V2) loads strictly; ``layer4`` and ``fc`` entries in the file are ignored. The weights are
not available offline here: the user supplies the file.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from efficientad_ext.formats.state_dict import load_strict, read_state_dict


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, torchvision's "ResNet v1.5") -> 1x1 expand x4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, width_factor: int) -> None:
        super().__init__()
        width, cout = planes * width_factor, planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class WideResNet101Trunk(nn.Module):
    """Stem + layer1..layer3 of Wide ResNet-101-2 (blocks 3, 4, 23; bottleneck width x2).
    ``forward`` returns (layer2, layer3) features: 512 channels at stride 8 and 1024 at 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for name, planes, blocks, stride in (("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 23, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(cin, planes, stride if i == 0 else 1, width_factor=2))
                cin = planes * Bottleneck.expansion
            setattr(self, name, nn.Sequential(*layers))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(self.layer1(x))
        return f2, self.layer3(f2)


def load_wide_resnet101_trunk(weights: str | os.PathLike[str]) -> WideResNet101Trunk:
    """The trunk in eval mode with weights from a local torchvision ``wide_resnet101_2``
    state-dict file (``layer4.*`` and ``fc.*`` are ignored; everything else must match)."""
    net = WideResNet101Trunk()
    load_strict(net, read_state_dict(weights), str(weights), ignore_prefixes=("layer4.", "fc."))
    return net.eval()
