"""ImageNet's per-channel mean and standard deviation of RGB in [0, 1]: the normalisation every
ImageNet-trained network here expects (the PDNs distilled from them, MobileNetV2, the Wide
ResNet; EfficientNet-Lite keeps its own 0.5 / 0.5, see its module)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
