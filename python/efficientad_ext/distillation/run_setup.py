"""What one distillation run sets up before its first step (:class:`Run`), how it starts or
resumes (the saved state, the settings a resume may change) and its target cache."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.data import list_images
from efficientad_ext.data.image_source import ImageSource, split_holdout
from efficientad_ext.distillation.config import (
    HOLDOUT_SEED_OFFSET,
    STATE_FILE,
    TEACHER_SIZE,
    DistillConfig,
    DistillRecord,
    machine_description,
)
from efficientad_ext.distillation.extractors import RawFeatureExtractor, TargetHead, build_extractor
from efficientad_ext.distillation.step import DistillStep
from efficientad_ext.distillation.target_cache_file import CACHE_FILE, cache_key, load_targets, save_targets
from efficientad_ext.distillation.targets import DistillTargets, estimate_moments
from efficientad_ext.formats.stale_files import remove_stale_temp_files
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from efficientad_ext.models.pdn import PDN, build_pdn
from efficientad_ext.progress import format_duration
from efficientad_ext.training.precision import describe_cpu, resolve_cpu_winograd, resolve_precision
from efficientad_ext.training.state import read_state, restore_optimizer_and_rng, save_state

log = logging.getLogger("efficientad_ext.distill")


def _split_holdout(paths: Sequence[Path], holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    if holdout >= len(paths):
        raise ValueError(
            f"holdout_images ({holdout}) must be smaller than the number of distillation images ({len(paths)})"
        )
    return split_holdout(paths, holdout, seed + HOLDOUT_SEED_OFFSET)


_STATE_KIND = "distill_state"


def save_distill_state(
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


def load_distill_state(
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
    "snapshot_every",
    "target_cache_file",
    # Winograd or direct convolutions: the same step up to float32 rounding (~1e-6 relative), so
    # a run started on one CPU may go on with the other where it is faster.
    "cpu_winograd",
)


def _run_identity(meta: dict[str, Any]) -> dict[str, Any]:
    # States written before the precision existed were distilled in float32 ("auto" unknown).
    config = {"precision": "auto", **{k: v for k, v in meta["config"].items() if k not in RESUMABLE_CHANGES}}
    return {"precision": "float32", **meta, "config": config}


@dataclass
class Run:
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


def _image_sources(paths: list[Path], config: DistillConfig) -> tuple[ImageSource, ImageSource, list[Path]]:
    """The teacher-size and extractor-size sources of the training images, and the held-out
    paths. With skip_corrupt, unreadable and too-small files are dropped before the hold-out is
    drawn, so one cannot take a held-out place (the same split as before when none is dropped)."""
    usable = ImageSource(paths, (TEACHER_SIZE, TEACHER_SIZE), config.max_preload_bytes, config.skip_corrupt)
    train_paths, held_paths = _split_holdout(usable.paths, config.holdout_images, config.seed)
    log.info(
        "distillation images: %d for training, %d held out, %d skipped",
        len(train_paths),
        len(held_paths),
        len(paths) - len(usable),
    )
    src_t = usable.subset(train_paths)
    size_e = (config.extractor_size, config.extractor_size)
    return src_t, ImageSource(src_t.paths, size_e, config.max_preload_bytes, config.skip_corrupt), held_paths


def setup(images, out_dir, config: DistillConfig, device: torch.device, command: str | None) -> Run:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out_dir])  # left by a run killed in this folder
    paths, images_desc = _image_paths(images)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    src_t, src_e, held_paths = _image_sources(paths, config)
    extractor = build_extractor(config.extractor, config.extractor_weights, config.extractor_size).to(device)
    teacher = build_pdn(config.arch, config.out_channels, padded=True).to(device)
    if config.channels_last:  # depthwise convolutions are ~3x faster channels-last on CPU (oneDNN)
        extractor = extractor.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    image_mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    image_std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    precision = resolve_precision(config.precision, device)
    teacher.cpu_winograd = resolve_cpu_winograd(config.cpu_winograd, precision, device)
    log.info(
        "precision: %s (asked: %s), convolutions: %s (cpu_winograd %s); %s",
        precision,
        config.precision,
        "Winograd" if teacher.cpu_winograd else "direct",
        config.cpu_winograd,
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
        cpu_winograd=teacher.cpu_winograd,
    )
    return Run(
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


def resume_or_start(run: Run, resume: bool) -> tuple[int, TargetHead]:
    """The step to start from and Psi's target head: the saved state's (``resume``), else
    step 0 with the head fitted to fresh feature statistics (Algorithm 3, lines 1-4)."""
    cfg = run.config
    if not resume:
        stats_gen = torch.Generator().manual_seed(cfg.seed + 1)
        moments = estimate_moments(run.extractor, run.src_e, cfg.stat_samples, cfg.p_grayscale, stats_gen, run.device)
        return 0, TargetHead.fit(run.extractor, moments, cfg.out_channels)
    if not run.state_path.is_file():
        raise FileNotFoundError(f"cannot resume: no distillation state at {run.state_path}")
    step, head, saved, saved_record = load_distill_state(
        run.state_path, run.teacher, run.step_fn, run.generator, run.device
    )
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


def target_cache(run: Run, targets: DistillTargets) -> Tensor | None:
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
    path = run.out_dir / CACHE_FILE
    key = None
    if run.config.target_cache_file:
        extractor_desc = {"name": run.config.extractor, "input_size": run.config.extractor_size}
        key = cache_key(targets.extractor, extractor_desc, targets.head, run.src_e.paths, run.device)
        grid = run.config.extractor_size // run.extractor.stride
        cache = load_targets(path, key, (len(run.src_e), run.config.out_channels, grid, grid))
        if cache is not None:
            log.info("Psi targets of %d images read from %s in %s", len(cache), path, _since(t0))
            return cache
    cache = targets.compute_all(run.src_e)
    log.info("cached Psi targets of %d images (%.1f GB) in %s", len(run.src_e), cache.numel() * 2 / 1e9, _since(t0))
    if key is not None:
        save_targets(path, key, cache)
        log.info("Psi targets kept in %s for --resume (--no-target-cache-file: not kept)", path)
    return cache


def _since(t0: float) -> str:
    return format_duration(time.perf_counter() - t0)
