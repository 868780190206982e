"""Teacher distillation, the paper's Algorithm 3.

A padded PDN (the teacher) learns to regress the standardised features of a pretrained
extractor Psi (see :mod:`efficientad_ext.extractors`) on ImageNet-like images:

1. Psi's per-channel mean/std (and, for the MobileNetV2 default, its projection to 384
   channels) from ``stat_samples`` draws of distillation images (paper: 10,000), each drawn
   image turned grayscale with p = 0.1;
2. per step, ``batch_size`` (16) images, each grayscale with p = 0.1; Psi sees the image
   resized to 512^2, the teacher the same image resized to 256^2; loss = mean over channels and
   cells of (standardised Psi - teacher)^2; Adam lr 1e-4, weight decay 1e-5; 60,000 steps.

The padded PDN maps 256^2 to exactly Psi's 64x64 stride-8 grid; its weights serve padded and
unpadded models alike.

Crops (``crop_size``): the PDN is fully convolutional, so the teacher may see a ``crop_size``^2
window of the 256^2 image (aligned to its stride of 4) instead of the whole image. A crop's
output cell j equals the whole image's cell j + offset, except within 4 cells of a crop edge
(the PDN's 33x33 receptive field then reaches into zero padding the whole image does not have:
checked by a test). Those cells are left out of the loss, unless that crop edge is an image
edge, where the padding is the same. The targets are always Psi on the whole image.

Speed: Psi's targets for the colour version of every training image are computed once and
cached (float16) when they fit ``target_cache_bytes``; grayscale draws are computed per step.
The run is checkpointed atomically (teacher, Adam state, RNG, step) and resumable; the
held-out loss (whole images the teacher never trains on) measures the teacher's quality.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.data import list_images, resize_image
from efficientad_ext.data.batches import batches
from efficientad_ext.data.image_source import ImageSource, split_holdout, to_unit_float
from efficientad_ext.distillation.extractors import (
    EXTRACTORS,
    RawFeatureExtractor,
    RawMoments,
    TargetHead,
    build_extractor,
)
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.stale_files import remove_stale_temp_files
from efficientad_ext.formats.teacher_file import save_teacher
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from efficientad_ext.models.pdn import PDN, build_pdn
from efficientad_ext.progress import Progress, format_duration
from efficientad_ext.training.augment import draw_resized_crops, grayscale, resized_crops
from efficientad_ext.training.driver import run_steps
from efficientad_ext.training.precision import PRECISIONS, autocast, describe_cpu, resolve_precision
from efficientad_ext.training.state import read_state, restore_optimizer_and_rng, save_state

log = logging.getLogger("efficientad_ext.distill")

TEACHER_SIZE = 256
CROP_MARGIN_CELLS = 4  # cells within this distance of a crop edge see padding a whole image does not
PDN_STRIDE = 4
AUGMENTATIONS = ("none", "resized_crop")
# The hold-out's permutation is seeded apart from the training draws (seed + this prime), so that
# changing --seed changes both, yet the two streams never coincide.
HOLDOUT_SEED_OFFSET = 7919
STATE_FILE = "distill_state.safetensors"
TEACHER_FILE = "teacher.safetensors"
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
    log_every: int = 50
    seed: int = 0
    target_cache_bytes: int = 8 * 2**30
    max_preload_bytes: int = 4 * 2**30
    skip_corrupt: bool = False
    channels_last: bool = True
    precision: str = "auto"  # the teacher's forward: bf16 autocast on native-bf16 CPUs and GPUs (see training.trainer)
    time_limit_s: float | None = None  # stop early (teacher written) once training has run this long

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
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0 or not 0.0 <= self.p_flip <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1 and p_flip be in [0, 1], got {self.crop_scale} and {self.p_flip}"
            )
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


def _gray3(x: Tensor) -> Tensor:
    return grayscale(x).expand(-1, 3, -1, -1)


class DistillTargets:
    """Psi's standardised features: extractor + fitted :class:`TargetHead`, with the cache."""

    def __init__(self, extractor: RawFeatureExtractor, head: TargetHead, device: torch.device) -> None:
        self.extractor = extractor.to(device)
        self.head = head.to(device)
        self.device = device
        self.channels_last = next(extractor.parameters()).is_contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def compute(self, images_512: Tensor) -> Tensor:
        """[B, 3, 512, 512] in [0, 1] -> [B, C, 64, 64] float32 (contiguous)."""
        if self.channels_last:
            images_512 = images_512.contiguous(memory_format=torch.channels_last)
        return self.head(self.extractor(images_512)).contiguous()

    @torch.no_grad()
    def compute_all(self, source: ImageSource, batch_size: int = 8) -> Tensor:
        """Targets of the colour version of every image of ``source``, float16 on the CPU."""
        out = []
        for i in range(0, len(source), batch_size):
            x = to_unit_float(source.get(range(i, min(i + batch_size, len(source)))), self.device)
            out.append(self.compute(x).half().cpu())
        return torch.cat(out)


@torch.no_grad()
def estimate_moments(
    extractor: RawFeatureExtractor,
    source: ImageSource,
    samples: int,
    p_grayscale: float,
    generator: torch.Generator,
    device: torch.device,
    batch_size: int = 8,
) -> RawMoments:
    """Moments of Psi's raw features over ``samples`` draws (with replacement once
    ``samples`` exceeds the set; each draw grayscale with ``p_grayscale``)."""
    moments = RawMoments(extractor.raw_channels)
    if samples >= len(source):
        order = torch.cat(
            [torch.randperm(len(source), generator=generator) for _ in range(math.ceil(samples / len(source)))]
        )
    else:
        order = torch.randperm(len(source), generator=generator)
    order = order[:samples].tolist()
    gray = (torch.rand(samples, generator=generator) < p_grayscale).tolist()
    done = 0
    for _, images in batches(source, batch_size, indices=order, label="feature statistics"):
        x = to_unit_float(torch.stack(images), device)
        g = torch.tensor(gray[done : done + len(images)], device=device).view(-1, 1, 1, 1)
        done += len(images)
        x = torch.where(g, _gray3(x), x)
        if next(extractor.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        moments.update(extractor(x))
    return moments


def crop_valid_mask(cell_y: int, cell_x: int, cells: int, grid: int, device: torch.device) -> Tensor:
    """[cells, cells] bool: which output cells of a crop starting at cell (cell_y, cell_x)
    equal the whole image's cells (see the module docstring)."""
    m = CROP_MARGIN_CELLS
    r = torch.arange(cells, device=device)

    def axis(start: int) -> Tensor:
        lo = r >= m if start > 0 else torch.ones_like(r, dtype=torch.bool)
        hi = r < cells - m if start + cells < grid else torch.ones_like(r, dtype=torch.bool)
        return lo & hi

    return axis(cell_y)[:, None] & axis(cell_x)[None, :]


class DistillStep:
    """One optimisation step of Algorithm 3 (lines 5-17) on a batch."""

    def __init__(
        self, teacher: PDN, config: DistillConfig, image_mean: Tensor, image_std: Tensor, precision: str = "float32"
    ) -> None:
        self.teacher = teacher
        self.config = config
        self.precision = precision  # resolved: the teacher's forward under bf16 autocast or not; the loss is float32
        self.image_mean, self.image_std = image_mean, image_std
        self.optimizer = torch.optim.Adam(teacher.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def loss(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> Tensor:
        """images_256 [B, 3, 256, 256] in [0, 1]; targets [B, C, 64, 64]; crops: per image the
        crop's top-left output cell (None: whole images)."""
        x = (images_256 - self.image_mean) / self.image_std
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if crops is None:
            return ((self._forward(x) - targets) ** 2).mean()
        size, grid = self.config.crop_size, targets.shape[-1]
        cells = size // PDN_STRIDE
        windows = torch.stack(
            [
                x[i, :, PDN_STRIDE * cy : PDN_STRIDE * cy + size, PDN_STRIDE * cx : PDN_STRIDE * cx + size]
                for i, (cy, cx) in enumerate(crops)
            ]
        )
        out = self._forward(windows)
        target = torch.stack([targets[i, :, cy : cy + cells, cx : cx + cells] for i, (cy, cx) in enumerate(crops)])
        mask = torch.stack([crop_valid_mask(cy, cx, cells, grid, x.device) for cy, cx in crops]).unsqueeze(1)
        sq = ((out - target) ** 2) * mask
        return sq.sum() / (mask.sum() * out.shape[1])

    def _forward(self, x: Tensor) -> Tensor:
        with autocast(self.precision, x.device):
            return self.teacher(x).float()

    def __call__(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images_256, targets, crops)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


@torch.no_grad()
def holdout_loss(
    teacher: PDN, images_256: Tensor, targets: Tensor, image_mean: Tensor, image_std: Tensor, batch_size: int = 8
) -> float:
    """Mean squared error of the teacher on whole held-out images (Algorithm 3's loss)."""
    was_training = teacher.training
    teacher.eval()
    total, n = 0.0, 0
    for i in range(0, images_256.shape[0], batch_size):
        x = (to_unit_float(images_256[i : i + batch_size], image_mean.device) - image_mean) / image_std
        t = targets[i : i + batch_size].to(x.device).float()
        total += float(((teacher(x) - t) ** 2).sum())
        n += t.numel()
    teacher.train(was_training)
    return total / max(n, 1)


def _split_holdout(paths: Sequence[Path], holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    if holdout >= len(paths):
        raise ValueError(
            f"holdout_images ({holdout}) must be smaller than the number of distillation images ({len(paths)})"
        )
    return split_holdout(paths, holdout, seed + HOLDOUT_SEED_OFFSET)


_STATE_KIND = "distill_state"


def _save_state(
    path: Path,
    teacher: PDN,
    head: TargetHead,
    step_fn: DistillStep,
    generator: torch.Generator,
    step: int,
    record: DistillRecord,
    meta: dict[str, Any],
) -> None:
    save_state(
        path,
        _STATE_KIND,
        step,
        {"teacher": teacher, "head": head},
        step_fn.optimizer,
        generator,
        metadata={"meta": json.dumps(meta), "record": json.dumps(asdict(record))},
    )


def _load_state(
    path: Path, teacher: PDN, step_fn: DistillStep, generator: torch.Generator, device: torch.device
) -> tuple[int, TargetHead, dict[str, Any], dict[str, Any]]:
    saved = read_state(path, _STATE_KIND, "distillation state")
    teacher.load_state_dict(saved.module_state("teacher"), strict=True)
    head_sd = saved.module_state("head")
    head = TargetHead(head_sd["conv.weight"].shape[1], head_sd["conv.weight"].shape[0])
    head.load_state_dict(head_sd, strict=True)
    restore_optimizer_and_rng(saved, step_fn.optimizer, generator, device)
    return saved.step, head, json.loads(saved.metadata["meta"]), json.loads(saved.metadata["record"])


# Settings that may change when a run is resumed: none alters what a step computes. (Algorithm 3
# has no schedule that depends on the total, so a run may also be extended or cut short.)
RESUMABLE_CHANGES = (
    "steps",
    "time_limit_s",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "target_cache_bytes",
    "max_preload_bytes",
)


def _run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    # States written before the precision existed were distilled in float32 ("auto" unknown).
    config = {"precision": "auto", **{k: v for k, v in meta["config"].items() if k not in RESUMABLE_CHANGES}}
    return {"precision": "float32", **meta, "config": config}


@dataclass
class _Run:
    """Everything one call of :func:`distill` sets up before its first step."""

    config: DistillConfig
    out_dir: Path
    device: torch.device
    generator: torch.Generator
    src_t: ImageSource  # training images at the teacher's 256x256
    src_e: ImageSource  # the same images at the extractor's 512x512
    held_paths: list[Path]
    extractor: RawFeatureExtractor
    teacher: PDN
    image_mean: Tensor
    image_std: Tensor
    step_fn: DistillStep
    record: DistillRecord
    meta: dict[str, Any]  # what a resumed run must agree on (JSON form)

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE


def _image_paths(images) -> tuple[list[Path], str]:
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"distillation image folder not found: {folder}")
        paths, desc = list_images(folder), str(folder)
    else:
        paths, desc = [Path(p) for p in images], f"{len(images)} listed images"
    if len(paths) < 2:
        raise ValueError(f"distillation needs at least 2 images, got {len(paths)} from {desc}")
    return paths, desc


def _setup(images, out_dir, config: DistillConfig, device: torch.device, command: str | None) -> _Run:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out_dir])  # left by a run killed in this folder
    paths, images_desc = _image_paths(images)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_paths, held_paths = _split_holdout(paths, config.holdout_images, config.seed)
    log.info("distillation images: %d for training, %d held out", len(train_paths), len(held_paths))
    src_t = ImageSource(train_paths, (TEACHER_SIZE, TEACHER_SIZE), config.max_preload_bytes, config.skip_corrupt)
    size_e = (config.extractor_size, config.extractor_size)
    src_e = ImageSource(src_t.paths, size_e, config.max_preload_bytes, config.skip_corrupt)
    extractor = build_extractor(config.extractor, config.extractor_weights, config.extractor_size).to(device)
    teacher = build_pdn(config.arch, config.out_channels, padded=True).to(device)
    if config.channels_last:  # depthwise convolutions are ~3x faster channels-last on CPU (oneDNN)
        extractor = extractor.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    image_mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    image_std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    precision = resolve_precision(config.precision, device)
    log.info(
        "precision: %s (asked: %s; %s)",
        precision,
        config.precision,
        f"CPU flags: {describe_cpu()}" if device.type == "cpu" else f"device: {device}",
    )
    meta = json.loads(
        json.dumps(
            {"config": asdict(config), "images": images_desc, "train_images": len(src_t), "precision": precision}
        )
    )
    record = DistillRecord(
        config=asdict(config),
        images=images_desc,
        train_images=len(src_t),
        holdout_images=len(held_paths),
        machine=machine_description(),
        torch_version=torch.__version__,
        command=command if command is not None else " ".join(sys.argv),
        precision=precision,
    )
    return _Run(
        config,
        out_dir,
        device,
        generator,
        src_t,
        src_e,
        held_paths,
        extractor,
        teacher,
        image_mean,
        image_std,
        DistillStep(teacher, config, image_mean, image_std, precision),
        record,
        meta,
    )


def _resume_or_start(run: _Run, resume: bool) -> tuple[int, TargetHead]:
    """The step to start from and Psi's target head: the saved state's (``resume``), else
    step 0 with the head fitted to fresh feature statistics (Algorithm 3, lines 1-4)."""
    cfg = run.config
    if not resume:
        stats_gen = torch.Generator().manual_seed(cfg.seed + 1)
        moments = estimate_moments(run.extractor, run.src_e, cfg.stat_samples, cfg.p_grayscale, stats_gen, run.device)
        return 0, TargetHead.fit(run.extractor, moments, cfg.out_channels)
    if not run.state_path.is_file():
        raise FileNotFoundError(f"cannot resume: no distillation state at {run.state_path}")
    step, head, saved, saved_record = _load_state(run.state_path, run.teacher, run.step_fn, run.generator, run.device)
    if _run_identity(saved) != _run_identity(run.meta):
        raise ValueError(
            f"cannot resume {run.state_path}: it was started with {_run_identity(saved)}, "
            f"this run has {_run_identity(run.meta)}"
        )
    record = run.record
    record.steps_done, record.seconds = saved_record["steps_done"], saved_record["seconds"]
    record.loss_history = [tuple(x) for x in saved_record["loss_history"]]
    record.holdout_history = [tuple(x) for x in saved_record["holdout_history"]]
    log.info("resuming at step %d of %d", step, cfg.steps)
    return step, head


def _target_cache(run: _Run, targets: DistillTargets) -> Tensor | None:
    """Psi's targets of the colour version of every training image, when they fit the budget
    (never with random resized crops: every draw is a new image)."""
    if run.config.augment != "none":
        log.info("Psi targets computed per step (augment=%s)", run.config.augment)
        return None
    bytes_per_target = run.config.out_channels * (run.config.extractor_size // run.extractor.stride) ** 2 * 2
    needed = len(run.src_e) * bytes_per_target
    if needed > run.config.target_cache_bytes:
        log.info("Psi targets computed per step (cache would need %.1f GB)", needed / 1e9)
        return None
    t0 = time.perf_counter()
    cache = targets.compute_all(run.src_e)
    log.info(
        "cached Psi targets of %d images (%.1f GB) in %s",
        len(run.src_e),
        cache.numel() * 2 / 1e9,
        format_duration(time.perf_counter() - t0),
    )
    return cache


def _holdout_evaluator(run: _Run, targets: DistillTargets):
    """A function that appends the teacher's held-out loss at a step to the record (a no-op
    without held-out images)."""
    if not run.held_paths:
        return lambda step: None
    cfg = run.config
    held_src_t = ImageSource(run.held_paths, (TEACHER_SIZE, TEACHER_SIZE), cfg.max_preload_bytes, cfg.skip_corrupt)
    held_t = held_src_t.get(range(len(held_src_t)))
    size_e = (cfg.extractor_size, cfg.extractor_size)
    held_targets = targets.compute_all(ImageSource(held_src_t.paths, size_e, cfg.max_preload_bytes, cfg.skip_corrupt))

    def evaluate(step: int) -> None:
        value = holdout_loss(run.teacher, held_t, held_targets, run.image_mean, run.image_std)
        run.record.holdout_history.append((step, value))
        run.record.holdout_loss = value
        log.info("step %d: held-out loss %.4f", step, value)

    return evaluate


def _step_function(run: _Run, targets: DistillTargets, cache: Tensor | None):
    """One step of Algorithm 3 (lines 5-17): draw images, grayscale and crops from the run's
    generator, fetch or compute Psi's targets, update the teacher; returns ``{"loss": ...}``."""
    cfg, device, generator = run.config, run.device, run.generator
    grid = cfg.extractor_size // run.extractor.stride

    def one_step(step: int) -> dict[str, float]:
        idx = torch.randint(len(run.src_t), (cfg.batch_size,), generator=generator).tolist()
        gray = torch.rand(cfg.batch_size, generator=generator) < cfg.p_grayscale
        g = gray.to(device).view(-1, 1, 1, 1)
        if cfg.augment == "resized_crop":  # Psi and the teacher see the same crop, from the 512^2 image
            boxes, flip = draw_resized_crops(
                cfg.batch_size, cfg.extractor_size, generator, cfg.crop_scale, p_flip=cfg.p_flip
            )
        crops = None
        if cfg.crop_size is not None:
            last = grid - cfg.crop_size // PDN_STRIDE
            crops = torch.randint(last + 1, (cfg.batch_size, 2), generator=generator).tolist()
        if cfg.augment == "resized_crop":
            xe = resized_crops(to_unit_float(run.src_e.get(idx), device), boxes, flip, cfg.extractor_size)
            xe = torch.where(g, _gray3(xe), xe)
            x = resize_image(xe, (TEACHER_SIZE, TEACHER_SIZE)).clamp_(0, 1)  # the same crop, at the teacher's size
            return {"loss": run.step_fn(x, targets.compute(xe), crops)}
        x = to_unit_float(run.src_t.get(idx), device)
        x = torch.where(g, _gray3(x), x)
        if cache is not None:
            y = cache[idx].to(device).float()
            if bool(gray.any()):
                gi = gray.nonzero().flatten().tolist()
                y[gi] = targets.compute(_gray3(to_unit_float(run.src_e.get([idx[i] for i in gi]), device)))
        else:
            xe = to_unit_float(run.src_e.get(idx), device)
            y = targets.compute(torch.where(g, _gray3(xe), xe))
        return {"loss": run.step_fn(x, y, crops)}

    return one_step


def _loop(run: _Run, step: int, head: TargetHead, resume: bool) -> int:
    """Distils until ``config.steps`` or the time limit; returns the steps done."""
    cfg, record = run.config, run.record
    targets = DistillTargets(run.extractor, head, run.device)
    one_step = _step_function(run, targets, _target_cache(run, targets))
    evaluate = _holdout_evaluator(run, targets)
    if not resume:
        evaluate(step)
    run.teacher.train()
    t0, seconds_before = time.perf_counter(), record.seconds
    window: list[float] = []

    def out_of_time(done: int) -> bool:
        if cfg.time_limit_s is None or seconds_before + time.perf_counter() - t0 < cfg.time_limit_s:
            return False
        log.warning("time limit of %.0f s reached after %d of %d steps", cfg.time_limit_s, done, cfg.steps)
        return True

    def after_step(done: int, terms: dict[str, float]) -> None:
        window.append(terms["loss"])
        if done % cfg.log_every == 0 or done == cfg.steps:
            record.final_loss = sum(window) / len(window)
            record.loss_history.append((done, record.final_loss))
            window.clear()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            evaluate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            record.steps_done = done
            record.seconds = round(seconds_before + time.perf_counter() - t0, 2)
            _save_state(run.state_path, run.teacher, head, run.step_fn, run.generator, done, record, run.meta)

    progress = Progress(cfg.steps, start=step, label="distill", every=cfg.log_every)
    step, _ = run_steps("distillation", step, cfg.steps, one_step, after_step, progress, out_of_time)
    if not record.holdout_history or record.holdout_history[-1][0] != step:
        evaluate(step)  # the record always ends with the final teacher's held-out loss
    record.steps_done = step
    record.seconds = round(seconds_before + time.perf_counter() - t0, 2)
    return step


def _finalise(run: _Run, step: int, save_dtype: torch.dtype) -> PDN:
    """Writes the teacher file and ``distill.json``."""
    run.teacher.eval()
    save_teacher(run.teacher, run.out_dir / TEACHER_FILE, run.record, save_dtype)
    write_text_atomically(run.out_dir / RECORD_FILE, json.dumps(asdict(run.record), indent=2))
    log.info(
        "distilled %d steps in %s; held-out loss %.4f; teacher written to %s",
        step,
        format_duration(run.record.seconds),
        run.record.holdout_loss,
        run.out_dir / TEACHER_FILE,
    )
    return run.teacher


def distill(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: DistillConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    save_dtype: torch.dtype = torch.float32,
    command: str | None = None,
) -> PDN:
    """Distils a PDN teacher (Algorithm 3); writes ``out_dir/teacher.safetensors`` and
    ``out_dir/distill.json``.

    Args:
        images: a folder of distillation images (searched recursively) or a list of paths.
        out_dir: output folder (also holds the resumable state).
        config: hyper-parameters (default: the paper's, MobileNetV2 extractor).
        device: where to run.
        resume: continue from ``out_dir/distill_state.safetensors``.
        save_dtype: dtype of the written teacher weights (float16 halves the file).
        command: the command line to record (default: ``sys.argv``).
    """
    run = _setup(images, out_dir, config or DistillConfig(), torch.device(device), command)
    step, head = _resume_or_start(run, resume)
    step = _loop(run, step, head, resume)
    return _finalise(run, step, save_dtype)
