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

from . import integrity
from .augment import grayscale
from .checkpoint import ModelFileError
from .data import list_images
from .extractors import EXTRACTORS, RawFeatureExtractor, RawMoments, TargetHead, build_extractor
from .files import write_atomically, write_text_atomically
from .stale_files import remove_stale_temp_files
from .pdn import PDN, build_pdn
from .progress import Progress, format_duration
from .train import ImageSource

log = logging.getLogger("efficientad_ext.distill")

TEACHER_SIZE = 256
CROP_MARGIN_CELLS = 4  # cells within this distance of a crop edge see padding a whole image does not
PDN_STRIDE = 4
STATE_FILE = "distill_state.safetensors"
TEACHER_FILE = "teacher.safetensors"
RECORD_FILE = "distill.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    holdout_images: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    target_cache_bytes: int = 8 * 2**30
    max_preload_bytes: int = 4 * 2**30
    skip_corrupt: bool = False
    channels_last: bool = True
    time_limit_s: float | None = None  # stop early (teacher written) once training has run this long

    def __post_init__(self) -> None:
        if self.arch not in ("small", "medium"):
            raise ValueError(f"arch must be 'small' or 'medium', got {self.arch!r}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"extractor must be one of {EXTRACTORS}, got {self.extractor!r}")
        if self.extractor_size != 2 * TEACHER_SIZE:
            raise ValueError(f"extractor_size must be {2 * TEACHER_SIZE} (Psi's stride-8 grid must match the teacher's 64x64 output)")
        if self.steps < 1 or self.batch_size < 1 or self.stat_samples < 1:
            raise ValueError(f"steps, batch_size and stat_samples must be >= 1, got {self.steps}, {self.batch_size}, {self.stat_samples}")
        if not 0.0 <= self.p_grayscale <= 1.0:
            raise ValueError(f"p_grayscale must be in [0, 1], got {self.p_grayscale}")
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


def _to_unit(images_uint8: Tensor, device: torch.device) -> Tensor:
    return images_uint8.to(device, non_blocking=True).float().div_(255.0)


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
            x = _to_unit(source.get(range(i, min(i + batch_size, len(source)))), self.device)
            out.append(self.compute(x).half().cpu())
        return torch.cat(out)


@torch.no_grad()
def estimate_moments(extractor: RawFeatureExtractor, source: ImageSource, samples: int, p_grayscale: float,
                     generator: torch.Generator, device: torch.device, batch_size: int = 8) -> RawMoments:
    """Moments of Psi's raw features over ``samples`` draws (with replacement once
    ``samples`` exceeds the set; each draw grayscale with ``p_grayscale``)."""
    moments = RawMoments(extractor.raw_channels)
    if samples >= len(source):
        order = torch.cat([torch.randperm(len(source), generator=generator) for _ in range(math.ceil(samples / len(source)))])
    else:
        order = torch.randperm(len(source), generator=generator)
    order = order[:samples].tolist()
    gray = (torch.rand(samples, generator=generator) < p_grayscale).tolist()
    progress = Progress(samples, label="feature statistics", every=max(1, samples // 10 // batch_size * batch_size), unit="images")
    for i in range(0, samples, batch_size):
        idx = order[i : i + batch_size]
        x = _to_unit(source.get(idx), device)
        g = torch.tensor(gray[i : i + batch_size], device=device).view(-1, 1, 1, 1)
        x = torch.where(g, _gray3(x), x)
        if next(extractor.parameters()).is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        moments.update(extractor(x))
        progress.update(min(i + batch_size, samples))
    progress.close()
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

    def __init__(self, teacher: PDN, config: DistillConfig, image_mean: Tensor, image_std: Tensor) -> None:
        self.teacher = teacher
        self.config = config
        self.image_mean, self.image_std = image_mean, image_std
        self.optimizer = torch.optim.Adam(teacher.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def loss(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> Tensor:
        """images_256 [B, 3, 256, 256] in [0, 1]; targets [B, C, 64, 64]; crops: per image the
        crop's top-left output cell (None: whole images)."""
        x = (images_256 - self.image_mean) / self.image_std
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if crops is None:
            return ((self.teacher(x) - targets) ** 2).mean()
        size, grid = self.config.crop_size, targets.shape[-1]
        cells = size // PDN_STRIDE
        windows = torch.stack([x[i, :, PDN_STRIDE * cy : PDN_STRIDE * cy + size, PDN_STRIDE * cx : PDN_STRIDE * cx + size]
                               for i, (cy, cx) in enumerate(crops)])
        out = self.teacher(windows)
        target = torch.stack([targets[i, :, cy : cy + cells, cx : cx + cells] for i, (cy, cx) in enumerate(crops)])
        mask = torch.stack([crop_valid_mask(cy, cx, cells, grid, x.device) for cy, cx in crops]).unsqueeze(1)
        sq = ((out - target) ** 2) * mask
        return sq.sum() / (mask.sum() * out.shape[1])

    def __call__(self, images_256: Tensor, targets: Tensor, crops: Sequence[tuple[int, int]] | None) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images_256, targets, crops)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


@torch.no_grad()
def holdout_loss(teacher: PDN, images_256: Tensor, targets: Tensor, image_mean: Tensor, image_std: Tensor, batch_size: int = 8) -> float:
    """Mean squared error of the teacher on whole held-out images (Algorithm 3's loss)."""
    was_training = teacher.training
    teacher.eval()
    total, n = 0.0, 0
    for i in range(0, images_256.shape[0], batch_size):
        x = (_to_unit(images_256[i : i + batch_size], image_mean.device) - image_mean) / image_std
        t = targets[i : i + batch_size].to(x.device).float()
        total += float(((teacher(x) - t) ** 2).sum())
        n += t.numel()
    teacher.train(was_training)
    return total / max(n, 1)


def _split_holdout(paths: Sequence[Path], holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    paths = sorted(Path(p) for p in paths)
    if holdout >= len(paths):
        raise ValueError(f"holdout_images ({holdout}) must be smaller than the number of distillation images ({len(paths)})")
    perm = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = sorted(paths[i] for i in perm[:holdout])
    return [p for p in paths if p not in set(held)], held


def _save_state(path: Path, teacher: PDN, head: TargetHead, step_fn: DistillStep, generator: torch.Generator,
                step: int, record: DistillRecord, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"teacher.{k}": v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    opt = step_fn.optimizer.state_dict()
    for idx, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"format": "efficientad_ext.distill_state", "format_version": "1", "step": str(step),
                "param_groups": json.dumps(opt["param_groups"]), "meta": json.dumps(meta),
                "record": json.dumps(asdict(record))}
    metadata = integrity.with_digest(tensors, metadata)
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_state(path: Path, teacher: PDN, step_fn: DistillStep, generator: torch.Generator, device: torch.device
                ) -> tuple[int, TargetHead, dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != "efficientad_ext.distill_state" or metadata.get("format_version") != "1":
                raise ValueError(f"{path} is not an efficientad_ext distillation state (format {metadata.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{path} is not a readable distillation state (safetensors): {e}") from None
    integrity.verify(tensors, metadata, source=str(path), error=ModelFileError)
    teacher.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")}, strict=True)
    head_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    head = TargetHead(head_sd["conv.weight"].shape[1], head_sd["conv.weight"].shape[0])
    head.load_state_dict(head_sd, strict=True)
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.to(device) if name != "step" else v
    step_fn.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), head, json.loads(metadata["meta"]), json.loads(metadata["record"])


# Settings that may change when a run is resumed: none alters what a step computes. (Algorithm 3
# has no schedule that depends on the total, so a run may also be extended or cut short.)
RESUMABLE_CHANGES = ("steps", "time_limit_s", "eval_every", "checkpoint_every", "log_every", "target_cache_bytes", "max_preload_bytes")


def _run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in meta["config"].items() if k not in RESUMABLE_CHANGES}
    return {**meta, "config": config}


def save_teacher(teacher: PDN, path: str | os.PathLike[str], record: DistillRecord, dtype: torch.dtype = torch.float32) -> Path:
    """Writes the teacher's weights (``dtype``) and the run's record (metadata) as safetensors,
    atomically. The file loads with ``--teacher`` / :func:`load_teacher_weights`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in teacher.state_dict().items()}
    metadata = {"format": "efficientad_ext.teacher", "format_version": "1", "arch": teacher.arch,
                "out_channels": str(teacher.out_channels), "record": json.dumps(asdict(record))}
    metadata = integrity.with_digest(tensors, metadata)
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


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
    config = config or DistillConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out_dir])  # left by a run killed in this folder
    device = torch.device(device)
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"distillation image folder not found: {folder}")
        paths = list_images(folder)
        images_desc = str(folder)
    else:
        paths = [Path(p) for p in images]
        images_desc = f"{len(paths)} listed images"
    if len(paths) < 2:
        raise ValueError(f"distillation needs at least 2 images, got {len(paths)} from {images_desc}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_paths, held_paths = _split_holdout(paths, config.holdout_images, config.seed)
    log.info("distillation images: %d for training, %d held out", len(train_paths), len(held_paths))

    size_t, size_e = (TEACHER_SIZE, TEACHER_SIZE), (config.extractor_size, config.extractor_size)
    src_t = ImageSource(train_paths, size_t, config.max_preload_bytes, config.skip_corrupt)
    src_e = ImageSource(src_t.paths, size_e, config.max_preload_bytes, config.skip_corrupt)
    extractor = build_extractor(config.extractor, config.extractor_weights, config.extractor_size).to(device)
    if config.channels_last:  # depthwise convolutions are ~3x faster channels-last on CPU (oneDNN)
        extractor = extractor.to(memory_format=torch.channels_last)
    teacher = build_pdn(config.arch, config.out_channels, padded=True).to(device)
    if config.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    image_mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    image_std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    step_fn = DistillStep(teacher, config, image_mean, image_std)
    meta = json.loads(json.dumps({"config": asdict(config), "images": images_desc, "train_images": len(src_t)}))
    record = DistillRecord(config=asdict(config), images=images_desc, train_images=len(src_t), holdout_images=len(held_paths),
                           machine=machine_description(), torch_version=torch.__version__,
                           command=command if command is not None else " ".join(sys.argv))
    state_path = out_dir / STATE_FILE

    step = 0
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: no distillation state at {state_path}")
        step, head, saved, saved_record = _load_state(state_path, teacher, step_fn, generator, device)
        if _run_identity(saved) != _run_identity(meta):
            raise ValueError(f"cannot resume {state_path}: it was started with {_run_identity(saved)}, "
                             f"this run has {_run_identity(meta)}")
        record.steps_done, record.seconds = saved_record["steps_done"], saved_record["seconds"]
        record.loss_history = [tuple(x) for x in saved_record["loss_history"]]
        record.holdout_history = [tuple(x) for x in saved_record["holdout_history"]]
        log.info("resuming at step %d of %d", step, config.steps)
    else:
        stats_gen = torch.Generator().manual_seed(config.seed + 1)
        moments = estimate_moments(extractor, src_e, config.stat_samples, config.p_grayscale, stats_gen, device)
        head = TargetHead.fit(extractor, moments, config.out_channels)
    targets = DistillTargets(extractor, head, device)

    bytes_per_target = config.out_channels * (config.extractor_size // extractor.stride) ** 2 * 2
    cache: Tensor | None = None
    if len(src_e) * bytes_per_target <= config.target_cache_bytes:
        t0 = time.perf_counter()
        cache = targets.compute_all(src_e)
        log.info("cached Psi targets of %d images (%.1f GB) in %s", len(src_e), cache.numel() * 2 / 1e9,
                 format_duration(time.perf_counter() - t0))
    else:
        log.info("Psi targets computed per step (cache would need %.1f GB)", len(src_e) * bytes_per_target / 1e9)
    held_t = held_targets = None
    if held_paths:
        held_src_t = ImageSource(held_paths, size_t, config.max_preload_bytes, config.skip_corrupt)
        held_t = held_src_t.get(range(len(held_src_t)))
        held_targets = targets.compute_all(ImageSource(held_src_t.paths, size_e, config.max_preload_bytes, config.skip_corrupt))

    def evaluate() -> None:
        if held_t is not None:
            value = holdout_loss(teacher, held_t, held_targets, image_mean, image_std)
            record.holdout_history.append((step, value))
            record.holdout_loss = value
            log.info("step %d: held-out loss %.4f", step, value)

    if not resume:
        evaluate()
    teacher.train()
    grid = config.extractor_size // extractor.stride
    progress = Progress(config.steps, start=step, label="distill", every=config.log_every)
    t0, seconds_before = time.perf_counter(), record.seconds
    window: list[float] = []
    while step < config.steps:
        if config.time_limit_s is not None and seconds_before + time.perf_counter() - t0 >= config.time_limit_s:
            log.warning("time limit of %.0f s reached after %d of %d steps", config.time_limit_s, step, config.steps)
            break
        idx = torch.randint(len(src_t), (config.batch_size,), generator=generator).tolist()
        gray = torch.rand(config.batch_size, generator=generator) < config.p_grayscale
        crops = None
        if config.crop_size is not None:
            last = grid - config.crop_size // PDN_STRIDE
            crops = torch.randint(last + 1, (config.batch_size, 2), generator=generator).tolist()
        x = _to_unit(src_t.get(idx), device)
        g = gray.to(device).view(-1, 1, 1, 1)
        x = torch.where(g, _gray3(x), x)
        if cache is not None:
            y = cache[idx].to(device).float()
            if bool(gray.any()):
                gi = gray.nonzero().flatten().tolist()
                y[gi] = targets.compute(_gray3(_to_unit(src_e.get([idx[i] for i in gi]), device)))
        else:
            xe = _to_unit(src_e.get(idx), device)
            y = targets.compute(torch.where(g, _gray3(xe), xe))
        loss = step_fn(x, y, crops)
        step += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"distillation diverged at step {step} (loss {loss})")
        window.append(loss)
        progress.update(step, loss=loss)
        if step % config.log_every == 0 or step == config.steps:
            record.final_loss = sum(window) / len(window)
            record.loss_history.append((step, record.final_loss))
            window = []
        if step % config.eval_every == 0 or step == config.steps:
            evaluate()
        if step % config.checkpoint_every == 0 or step == config.steps:
            record.steps_done = step
            record.seconds = round(seconds_before + time.perf_counter() - t0, 2)
            _save_state(state_path, teacher, head, step_fn, generator, step, record, meta)
    progress.close()
    if not record.holdout_history or record.holdout_history[-1][0] != step:
        evaluate()  # the record always ends with the final teacher's held-out loss
    record.steps_done = step
    record.seconds = round(seconds_before + time.perf_counter() - t0, 2)
    teacher.eval()
    save_teacher(teacher, out_dir / TEACHER_FILE, record, save_dtype)
    write_text_atomically(out_dir / RECORD_FILE, json.dumps(asdict(record), indent=2))
    log.info("distilled %d steps in %s; held-out loss %.4f; teacher written to %s", step, format_duration(record.seconds),
             record.holdout_loss, out_dir / TEACHER_FILE)
    return teacher
