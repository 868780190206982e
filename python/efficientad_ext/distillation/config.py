"""Algorithm 3's settings (:class:`DistillConfig`), the run's record (:class:`DistillRecord`) and its file names."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from efficientad_ext.distillation.extractors import EXTRACTORS
from efficientad_ext.training.precision import CPU_WINOGRAD_CHOICES, PRECISIONS

TEACHER_SIZE = 256
CROP_MARGIN_CELLS = 4  # cells within this distance of a crop edge see padding a whole image does not
PDN_STRIDE = 4
AUGMENTATIONS = ("none", "resized_crop")
# The hold-out's permutation is seeded apart from the training draws (seed + this prime), so that
# changing --seed changes both, yet the two streams never coincide.
HOLDOUT_SEED_OFFSET = 7919
STATE_FILE = "distill_state.safetensors"
TEACHER_FILE = "teacher.safetensors"
SNAPSHOT_DIR = "snapshots"  # teacher files at every snapshot_every steps: snapshots/teacher_step001000.safetensors


def snapshot_name(step: int) -> str:
    return f"teacher_step{step:06d}.safetensors"


RECORD_FILE = "distill.json"


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of Algorithm 3 (the paper's values are the defaults, except the
    extractor: the paper's WideResNet-101 weights are not available offline)."""

    arch: str = "small"
    out_channels: int = 384
    extractor: str = "mobilenet_v2"
    extractor_weights: str | None = None
    extractor_size: int = 512
    steps: int = 60_000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-5
    p_grayscale: float = 0.1
    stat_samples: int = 10_000
    crop_size: int | None = None  # None: the whole 256x256 image
    augment: str = "none"  # "resized_crop": each draw a random resized crop + horizontal flip (targets per step)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # the crop's share of the image area ("resized_crop")
    p_flip: float = 0.5  # horizontal flip probability ("resized_crop")
    holdout_images: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    snapshot_every: int = 0  # also keep a teacher file every N steps in snapshots/ (0: never)
    log_every: int = 50
    seed: int = 0
    target_cache_bytes: int = 8 * 2**30
    # Keep the cached targets in the run folder (psi_targets.safetensors, ~3 GB for 950 images),
    # so that --resume reads them instead of recomputing them (~11 min of a CPU core).
    target_cache_file: bool = True
    max_preload_bytes: int = 4 * 2**30
    skip_corrupt: bool = False
    channels_last: bool = True
    precision: str = "auto"  # the teacher's forward: bf16 autocast on native-bf16 CPUs and GPUs (see training.trainer)
    # "auto": the teacher's convolutions by Winograd in float32 CPU steps (forward and backward,
    # 2x+ faster steps on AVX2-only CPUs, rounding ~1e-6 relative); "off": oneDNN's direct ones.
    cpu_winograd: str = "auto"
    time_limit_s: float | None = None  # stop early (teacher + state written) once this run has trained this long

    def __post_init__(self) -> None:
        if self.arch not in ("small", "medium"):
            raise ValueError(f"arch must be 'small' or 'medium', got {self.arch!r}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {self.extractor!r}")
        if self.extractor_size != 2 * TEACHER_SIZE:
            raise ValueError(
                f"extractor_size must be {2 * TEACHER_SIZE} (Psi's stride-8 grid must match the teacher's 64x64 output)"
            )
        if self.steps < 1 or self.batch_size < 1 or self.stat_samples < 1:
            raise ValueError(
                f"steps, batch_size and stat_samples must be >= 1, got {self.steps}, {self.batch_size}, {self.stat_samples}"
            )
        if not 0.0 <= self.p_grayscale <= 1.0:
            raise ValueError(f"p_grayscale must be in [0, 1], got {self.p_grayscale}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.cpu_winograd not in CPU_WINOGRAD_CHOICES:
            raise ValueError(
                f"cpu_winograd must be one of {', '.join(CPU_WINOGRAD_CHOICES)}, got {self.cpu_winograd!r}"
            )
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0 or not 0.0 <= self.p_flip <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1 and p_flip be in [0, 1], got {self.crop_scale} and {self.p_flip}"
            )
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if self.holdout_images < 0:
            raise ValueError(f"holdout_images must be >= 0, got {self.holdout_images}")
        if self.crop_size is not None:
            min_crop = PDN_STRIDE * (2 * CROP_MARGIN_CELLS + 1)
            if not min_crop <= self.crop_size <= TEACHER_SIZE or self.crop_size % PDN_STRIDE:
                raise ValueError(
                    f"crop_size must be a multiple of {PDN_STRIDE} in [{min_crop}, {TEACHER_SIZE}] "
                    f"(or None for whole images), got {self.crop_size}"
                )


@dataclass
class DistillRecord:
    """What a distillation run did; written to ``distill.json`` and into the teacher file."""

    config: dict[str, Any]
    images: str
    train_images: int
    holdout_images: int
    steps_done: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")  # mean training loss over the last log window
    holdout_loss: float = float("nan")
    holdout_history: list[tuple[int, float]] = field(default_factory=list)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    machine: str = ""
    torch_version: str = ""
    command: str = ""
    precision: str = "float32"  # resolved from config.precision on the machine that ran
    cpu_winograd: bool = False  # whether the teacher's convolutions ran by Winograd (config.cpu_winograd resolved)


def machine_description() -> str:
    """CPU model, core count and GPU (when used), for provenance records."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name()}"
    return desc
