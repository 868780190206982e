"""Pretrained ImageNet backbones used as the feature extractor Psi of teacher distillation
(Algorithm 3). Written here in plain torch with torchvision's parameter names, so the official
torchvision weight files load strictly without torchvision itself."""
from .mobilenet_v2 import MobileNetV2, load_mobilenet_v2, packaged_mobilenet_v2_weights
from .wide_resnet import WideResNet101Trunk, load_wide_resnet101_trunk

__all__ = [
    "MobileNetV2",
    "WideResNet101Trunk",
    "load_mobilenet_v2",
    "load_wide_resnet101_trunk",
    "packaged_mobilenet_v2_weights",
]
