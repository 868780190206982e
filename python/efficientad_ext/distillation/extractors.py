"""The pretrained feature extractor Psi of teacher distillation (the paper's Algorithm 3).

Psi maps an ImageNet-normalised image of ``input_size``^2 (512 by default, as the paper) to
384 feature channels on the stride-8 grid (64x64), the grid of a padded PDN on a 256^2 image.
It is built in three parts:

1. a frozen ImageNet backbone and its *raw* local features: several layers, each averaged
   over its 3x3 neighbourhood (PatchCore's local aggregation) and brought to the stride-8
   grid (bilinear);
2. a fixed linear projection of the raw channels to 384 (a 1x1 convolution): the paper's
   WideResNet-101 path uses PatchCore's channel pooling; the offline default (MobileNetV2)
   has fewer, more varied channels and uses the 384-dimensional principal subspace of its
   standardised raw features on the distillation images, in a fixed random orthogonal basis
   (see :func:`projection_matrix`);
3. per-channel standardisation (Algorithm 3, line 2) with means and standard deviations
   estimated on the distillation images.

2 and 3 need the first and second moments of the raw features only, so both come from one
streaming float64 pass (:class:`RawMoments`) and fold into one 1x1 convolution
(:class:`TargetHead`).
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efficientad_ext.models.backbones import load_efficientnet_lite0, load_mobilenet_v2, load_wide_resnet101_trunk
from efficientad_ext.models.backbones.efficientnet_lite import INPUT_MEAN as LITE_INPUT_MEAN
from efficientad_ext.models.backbones.efficientnet_lite import INPUT_STD as LITE_INPUT_STD
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD

EXTRACTORS = ("mobilenet_v2", "efficientnet_lite0", "wide_resnet101_2")
ExtractorName = Literal["mobilenet_v2", "efficientnet_lite0", "wide_resnet101_2"]


def _aggregate_to_grid(features: list[Tensor], grid: tuple[int, int]) -> Tensor:
    """3x3 neighbourhood mean of each map (borders average the cells that exist), bilinear to
    ``grid``, concatenated along channels."""
    out = []
    for f in features:
        f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
        if tuple(f.shape[-2:]) != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, dim=1)


def tapped_outputs(blocks: Iterable[nn.Module], taps: Container[int], x: Tensor) -> list[Tensor]:
    """Runs ``x`` through ``blocks`` in order; the outputs of the blocks whose index is in ``taps``."""
    outputs = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i in taps:
            outputs.append(x)
    return outputs


class RawFeatureExtractor(nn.Module):
    """A frozen backbone's aggregated raw features on the stride-8 grid.

    Subclasses set ``name``, ``raw_channels`` and ``projection`` ("pca" or "pool"), and
    ``input_mean`` / ``input_std`` when their backbone was trained with other input
    normalisation than torchvision's ImageNet mean and std."""

    name: str
    raw_channels: int
    projection: Literal["pca", "pool"]
    stride = 8
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, input_size: int = 512) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.input_size = input_size
        self.register_buffer("image_mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.input_size // self.stride, self.input_size // self.stride

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] RGB -> the backbone's input normalisation."""
        return (x - self.image_mean) / self.image_std

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, input_size, input_size] in [0, 1] -> [B, raw_channels, input/8, input/8]."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"x must be [B, 3, {self.input_size}, {self.input_size}], got {tuple(x.shape)}")
        return _aggregate_to_grid(self.layers(self.normalize(x)), self.grid)

    def layers(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def pooling_matrix(self, out_channels: int) -> Tensor:
        raise ValueError(f"{self.name} has no fixed channel pooling; use the 'pca' projection")


class MobileNetV2Features(RawFeatureExtractor):
    """MobileNetV2 (ImageNet) outputs of blocks 6 (stride 8, 32 ch), 10 (16, 64), 13 (16, 96),
    16 (32, 160) and 17 (32, 320): 672 raw channels from mid- to high-level, the multi-scale
    mix PatchCore takes from layer2 + layer3 of a ResNet."""

    name = "mobilenet_v2"
    TAPS = (6, 10, 13, 16, 17)
    raw_channels = 32 + 64 + 96 + 160 + 320
    projection = "pca"

    def __init__(self, weights: str | os.PathLike[str] | None = None, input_size: int = 512) -> None:
        super().__init__(input_size)
        net = load_mobilenet_v2(weights)
        # Blocks after the last tap (the 1280-channel head, the classifier) are never run.
        self.features = net.features[: max(self.TAPS) + 1]
        self.requires_grad_(False)

    def layers(self, x: Tensor) -> list[Tensor]:
        return tapped_outputs(self.features, self.TAPS, x)


class EfficientNetLite0Features(RawFeatureExtractor):
    """EfficientNet-Lite0 (ImageNet) outputs of blocks 4 (stride 8, 40 ch), 7 (16, 80),
    10 (16, 112), 14 (32, 192) and 15 (32, 320), the last block of each stage from stride 8 on:
    744 raw channels. Under PatchCore's protocol on a real defect set, these features rank
    defects better than MobileNetV2's (benchmarks/RESULTS.md, teacher quality)."""

    name = "efficientnet_lite0"
    TAPS = (4, 7, 10, 14, 15)
    raw_channels = 40 + 80 + 112 + 192 + 320
    projection = "pca"
    input_mean, input_std = LITE_INPUT_MEAN, LITE_INPUT_STD

    def __init__(self, weights: str | os.PathLike[str] | None = None, input_size: int = 512) -> None:
        super().__init__(input_size)
        net = load_efficientnet_lite0(weights)
        # Blocks after the last tap and the head are never run.
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self.blocks = net._blocks[: max(self.TAPS) + 1]
        self.requires_grad_(False)

    def layers(self, x: Tensor) -> list[Tensor]:
        return tapped_outputs(self.blocks, self.TAPS, F.relu6(self._bn0(self._conv_stem(x))))


class WideResNetFeatures(RawFeatureExtractor):
    """The paper's Psi: Wide ResNet-101-2 layer2 (stride 8, 512 ch) + layer3 (16, 1024),
    PatchCore-aggregated; projected to 384 channels by PatchCore's channel pooling."""

    name = "wide_resnet101_2"
    raw_channels = 512 + 1024
    projection = "pool"

    def __init__(self, weights: str | os.PathLike[str] | None = None, input_size: int = 512) -> None:
        super().__init__(input_size)
        if weights is None:
            raise FileNotFoundError(
                "the wide_resnet101_2 extractor needs torchvision's ImageNet weights as a local file "
                "(wide_resnet101_2-32ee1156.pth or -d733dc28.pth); pass it with --extractor-weights. "
                "They are not shipped with this package and nothing is downloaded."
            )
        self.trunk = load_wide_resnet101_trunk(weights)
        self.requires_grad_(False)

    def layers(self, x: Tensor) -> list[Tensor]:
        return list(self.trunk(x))

    def pooling_matrix(self, out_channels: int) -> Tensor:
        """PatchCore's projection as a matrix: each layer's channel vector is average-pooled
        (adaptively) to 1024 values, the two are concatenated and average-pooled to
        ``out_channels``. Both poolings are linear, so applying them to the identity gives W."""
        eye2, eye3 = torch.eye(512, dtype=torch.float64), torch.eye(1024, dtype=torch.float64)
        # Columns are raw channels; rows after pooling are pooled channels.
        p2 = F.adaptive_avg_pool1d(eye2.T.unsqueeze(1), 1024).squeeze(1).T  # [1024, 512]
        p3 = F.adaptive_avg_pool1d(eye3.T.unsqueeze(1), 1024).squeeze(1).T  # [1024, 1024]
        stacked = torch.block_diag(p2, p3)  # [2048, 1536]
        return F.adaptive_avg_pool1d(stacked.T.unsqueeze(1), out_channels).squeeze(1).T  # [out, 1536]


def build_extractor(
    name: ExtractorName, weights: str | os.PathLike[str] | None = None, input_size: int = 512
) -> RawFeatureExtractor:
    """The raw feature extractor ``name`` with its ImageNet weights, in eval mode."""
    if name == "mobilenet_v2":
        return MobileNetV2Features(weights, input_size).eval()
    if name == "efficientnet_lite0":
        return EfficientNetLite0Features(weights, input_size).eval()
    if name == "wide_resnet101_2":
        return WideResNetFeatures(weights, input_size).eval()
    raise ValueError(f"extractor must be one of {EXTRACTORS}, got {name!r}")


class RawMoments:
    """Streaming first and second moments (float64) of raw feature vectors, over every
    ``cell_stride``-th grid cell in each direction (an unbiased subsample; the neighbouring
    cells are strongly correlated, so little information is lost)."""

    def __init__(self, channels: int, cell_stride: int = 2) -> None:
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)
        self.count = 0
        self.cell_stride = cell_stride

    def update(self, raw: Tensor) -> None:
        s = self.cell_stride
        f = raw[:, :, ::s, ::s].permute(0, 2, 3, 1).reshape(-1, raw.shape[1]).to(torch.float64).cpu()
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def mean_and_covariance(self) -> tuple[Tensor, Tensor]:
        if self.count < 2:
            raise ValueError("need at least two feature vectors to estimate the feature statistics")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, (cov + cov.T) / 2


def projection_matrix(
    extractor: RawFeatureExtractor, mean: Tensor, cov: Tensor, out_channels: int, seed: int = 0
) -> Tensor:
    """[out_channels, raw_channels] float64, applied to raw features.

    "pool": the extractor's fixed channel pooling. "pca": the raw channels are standardised
    (each counts equally, whatever its layer's scale), projected on the ``out_channels``
    principal directions of their correlation matrix, then rotated by a fixed random orthogonal
    matrix. The rotation matters because Algorithm 3 standardises every output channel: without
    it the minor directions (weak, mostly unpredictable detail) would be blown up to the same
    variance as the major ones and dominate the loss; after it every channel mixes all
    directions in proportion to their variance, so the loss weighs them as the features do.
    """
    if extractor.projection == "pool":
        return extractor.pooling_matrix(out_channels)
    if out_channels > cov.shape[0]:
        raise ValueError(f"cannot project {cov.shape[0]} raw channels onto {out_channels} principal directions")
    scale = cov.diagonal().clamp_min(1e-30).sqrt()
    corr = cov / torch.outer(scale, scale)
    eigenvalues, eigenvectors = torch.linalg.eigh(corr)
    top = eigenvectors[:, torch.argsort(eigenvalues, descending=True)[:out_channels]].T  # [out, raw], orthonormal rows
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(out_channels, out_channels, generator=g, dtype=torch.float64))
    rotation = q * torch.sign(r.diagonal())  # Haar-distributed orthogonal matrix (sign-fixed QR)
    return (rotation @ top) / scale  # acts on raw features: standardise, project, rotate


class TargetHead(nn.Module):
    """Projection + per-channel standardisation as one fixed 1x1 convolution:
    ``target = (W f - W mu) / sigma`` with ``sigma_c = sqrt((W Sigma W^T)_cc)``."""

    def __init__(self, raw_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(raw_channels, out_channels, 1)
        self.requires_grad_(False)

    @classmethod
    def fit(cls, extractor: RawFeatureExtractor, moments: RawMoments, out_channels: int = 384) -> TargetHead:
        mean, cov = moments.mean_and_covariance()
        w = projection_matrix(extractor, mean, cov, out_channels)
        std = torch.einsum("oc,cd,od->o", w, cov, w).clamp_min(0).sqrt()
        if bool((std <= 1e-12 * std.max()).any()):
            raise ValueError(
                "a projected feature channel has zero variance on the distillation images; use more/other images"
            )
        head = cls(w.shape[1], out_channels)
        with torch.no_grad():
            head.conv.weight.copy_((w / std[:, None]).view(out_channels, -1, 1, 1).float())
            head.conv.bias.copy_((-(w @ mean) / std).float())
        return head

    def forward(self, raw: Tensor) -> Tensor:
        return self.conv(raw)
