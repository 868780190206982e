"""How ``EfficientAD.infer`` runs: the one switchboard of the inference engine.

Each model owns an :class:`InferenceOptions` (``model.inference_options``); change it with
``model.inference_options = dataclasses.replace(model.inference_options, ...)``. Options are
part of the CUDA-graph key, so a graph captured under other options is never replayed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

WINOGRAD_ENV = "EFFICIENTAD_CPU_WINOGRAD"
WINOGRAD_TILES_ENV = "EFFICIENTAD_CPU_WINOGRAD_TILES"
# The tile sets of efficientad_ext.inference.winograd.TILES (tests/test_winograd.py keeps them equal).
WINOGRAD_TILE_SETS = ("large", "small")


def winograd_from_environment() -> bool:
    """``EFFICIENTAD_CPU_WINOGRAD`` (default on; 0/false/no/off turn it off), read when an
    options object is created without an explicit ``cpu_winograd``."""
    return os.environ.get(WINOGRAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def winograd_tiles_from_environment() -> str:
    """``EFFICIENTAD_CPU_WINOGRAD_TILES`` (``large``, the default, or ``small``), read when an
    options object is created without an explicit ``cpu_winograd_tiles``; a bad value is an
    error naming the variable."""
    value = os.environ.get(WINOGRAD_TILES_ENV, "large").strip().lower()
    if value not in WINOGRAD_TILE_SETS:
        raise ValueError(f"{WINOGRAD_TILES_ENV} must be one of {WINOGRAD_TILE_SETS}, got {value!r}")
    return value


@dataclass(frozen=True)
class InferenceOptions:
    """Choices that change speed, never the function computed (up to float rounding).

    ``cpu_winograd``: float32/float64 CPU inference runs the 3x3/4x4 convolutions by Winograd
    (:mod:`efficientad_ext.inference.cpu_winograd`); off: oneDNN direct convolutions.
    ``cpu_winograd_tiles``: which Winograd tiles (:data:`efficientad_ext.inference.winograd.TILES`):
    ``"large"`` (default; 8x8 input tiles, fewest multiplications) or ``"small"`` (6x6, the
    tiles before session 17: a little less rounding, more multiplications).
    ``fuse_first_layer``: device types ("cpu", "cuda") on which the teacher's and student's
    first layers run as one convolution (:mod:`efficientad_ext.inference.teacher_student`).
    Default CUDA only: on the CPU it measured no faster (benchmarks/RESULTS.md), since the split
    halves cost a copy each; on CUDA it saves a launch and a read of the image.
    ``cudnn_fusion`` (CUDA only, default off): every un-pooled convolution + bias + ReLU of the
    PDNs and the autoencoder runs as cuDNN's runtime-fused kernel
    (:mod:`efficientad_ext.inference.cuda_options`).
    ``autoencoder_side_stream`` (CUDA, batch 1, default off): the autoencoder is enqueued on a
    second stream while the PDNs run on the current one.
    The two CUDA switches stay off until a GPU has measured them (``benchmarks/gpu_table.py``
    has a row for each). Nothing here is read from the environment per call: a captured CUDA
    graph is keyed by these options, so it always runs the path it was captured with.
    """

    cpu_winograd: bool = field(default_factory=winograd_from_environment)
    cpu_winograd_tiles: str = field(default_factory=winograd_tiles_from_environment)
    fuse_first_layer: frozenset[str] = frozenset({"cuda"})
    cudnn_fusion: bool = False
    autoencoder_side_stream: bool = False

    def __post_init__(self) -> None:
        devices = frozenset(self.fuse_first_layer)
        unknown = devices - {"cpu", "cuda"}
        if unknown:
            raise ValueError(f"fuse_first_layer takes device types 'cpu' and 'cuda', got {sorted(unknown)}")
        object.__setattr__(self, "fuse_first_layer", devices)
        if self.cpu_winograd_tiles not in WINOGRAD_TILE_SETS:
            raise ValueError(f"cpu_winograd_tiles must be one of {WINOGRAD_TILE_SETS}, got {self.cpu_winograd_tiles!r}")
        for name in ("cpu_winograd", "cudnn_fusion", "autoencoder_side_stream"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def fuses_first_layer(self, device_type: str) -> bool:
        return device_type in self.fuse_first_layer
