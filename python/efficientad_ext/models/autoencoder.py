"""EfficientAD's autoencoder (the paper's Table 8), with decoder sizes derived from the
input size so that 256x256 and larger inputs (320, 512, non-square) all work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from efficientad_ext.models.trainable_conv import run_sequential, winograd_applies

# The smallest input side accepted (height and width): the paper's 256. decoder_sizes() stays
# positive from 128 up, but nothing below 256 is tested, so nothing below is accepted.
MIN_IMAGE_SIZE = 256
# The largest side accepted: inference needs about 1.3 GB per megapixel per image in float32
# (measured on the CPU: 0.5 GB at 512^2, 1.5 GB at 1024^2, 5.4 GB at 2048^2 above the model), so
# one 4096^2 image needs about 22 GB and a 16384^2 one about 350 GB. Larger images are tiled by
# the caller; a model file asking for more is refused at load, not by the allocator mid-call.
MAX_IMAGE_SIZE = 4096


def decoder_sizes(size: int) -> list[int]:
    """Bilinear upsampling targets of the decoder for an input side of ``size`` pixels
    (3, 8, 15, 32, 63, 127 at 256, as in the paper)."""
    return [size // 64 - 1, size // 32, size // 16 - 1, size // 8, size // 4 - 1, size // 2 - 1]


def run_autoencoder(
    x: Tensor,
    output_size: tuple[int, int],
    encoder: Callable[[Tensor], Tensor],
    decoder_stages: Sequence[Callable[[Tensor], Tensor]],
    head: Callable[[Tensor], Tensor],
) -> Tensor:
    """The autoencoder's forward, given its three parts as callables: the module's own
    (:meth:`Autoencoder.forward`) or the CPU engine's planned layers. The decoder stages are
    applied after bilinear upsampling to :func:`decoder_sizes`; the head after the upsampling
    to ``output_size``, the PDN's feature size."""
    height, width = x.shape[-2:]
    if height < MIN_IMAGE_SIZE or width < MIN_IMAGE_SIZE:
        raise ValueError(
            f"the autoencoder needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {height}x{width}"
        )
    code = encoder(x)
    for stage, sh, sw in zip(decoder_stages, decoder_sizes(height), decoder_sizes(width)):
        code = stage(F.interpolate(code, size=(sh, sw), mode="bilinear", align_corners=False))
    code = F.interpolate(code, size=tuple(output_size), mode="bilinear", align_corners=False)
    return head(code)


class Autoencoder(nn.Module):
    """Encoder: five 4x4 stride-2 convolutions and an 8x8 convolution to a 64-d code.
    Decoder: six (bilinear upsample, 4x4 conv, ReLU, dropout 0.2) stages, an upsample to the
    PDN's feature size, a 3x3 conv + ReLU and a 3x3 conv to ``out_channels``."""

    def __init__(self, out_channels: int = 384) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        channels = [3, 32, 32, 64, 64, 64]
        for cin, cout in zip(channels[:-1], channels[1:]):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        enc.append(nn.Conv2d(64, 64, 8))
        self.encoder = nn.Sequential(*enc)
        self.decoder_stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 4, stride=1, padding=2), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for _ in range(6)
        )
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, out_channels, 3, stride=1, padding=1),
        )
        # Training's convolutions by Winograd on the CPU, as PDN.cpu_winograd (not in the state
        # dict). Only the decoder's 4x4 and the head's 3x3 layers qualify: the encoder's are
        # stride 2 or 8x8.
        self.cpu_winograd = False

    def forward(self, x: Tensor, output_size: tuple[int, int]) -> Tensor:
        """x: [B, 3, H, W] with H, W >= 256; output_size: the PDN's feature size (h, w)."""
        if not winograd_applies(self.cpu_winograd, x):
            return run_autoencoder(x, output_size, self.encoder, self.decoder_stages, self.head)
        stages = [partial(run_sequential, stage, winograd=True) for stage in self.decoder_stages]
        return run_autoencoder(x, output_size, self.encoder, stages, partial(run_sequential, self.head, winograd=True))
