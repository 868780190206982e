"""What one training run sets up before its first step (:class:`Run`): the images, the model and
its teacher, the step, the precision; and how a run starts or resumes (the saved training state)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.data.image_source import ImageSource, split_validation
from efficientad_ext.evaluation.threshold import threshold_at_fpr
from efficientad_ext.formats.stale_files import remove_stale_temp_files
from efficientad_ext.formats.teacher_file import load_teacher_weights
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig, TrainingRecord
from efficientad_ext.training.config import STATE_FILE, TrainConfig
from efficientad_ext.training.distributed import DataParallel
from efficientad_ext.training.penalty import penalty_paths
from efficientad_ext.training.precision import (
    describe_cpu,
    resolve_cpu_winograd,
    resolve_memory_format,
    resolve_precision,
)
from efficientad_ext.training.state import read_state, restore_optimizer_and_rng, save_state
from efficientad_ext.training.statistics import holdout_scores, map_quantiles, teacher_channel_stats
from efficientad_ext.training.step import TrainStep
from efficientad_ext.training.teacher_cache import TeacherCache
from efficientad_ext.training.teacher_choice import resolve_teacher

log = logging.getLogger("efficientad_ext.train")


STATE_KIND = "train_state"


def save_train_state(
    path: Path,
    model: EfficientAD,
    stepper: TrainStep,
    step: int,
    meta: dict[str, Any],
    extra: dict[str, Tensor] | None = None,
) -> None:
    modules = {f"model.{name}": getattr(model, name) for name in ("teacher", "student", "autoencoder")}
    stats = {f"model.{name}": getattr(model, name) for name in ("teacher_mean", "teacher_std")}
    stats.update(extra or {})  # data-parallel training: every rank's RNG state (training/distributed.py)
    save_state(path, STATE_KIND, step, modules, stepper.optimizer, stepper.generator, stats, {"meta": json.dumps(meta)})


def load_train_state(path: Path, model: EfficientAD, stepper: TrainStep) -> tuple[int, dict[str, Any]]:
    saved = read_state(path, STATE_KIND, "training state")
    with torch.no_grad():
        for name in ("teacher", "student", "autoencoder"):
            getattr(model, name).load_state_dict(saved.module_state(f"model.{name}"), strict=True)
        for name in ("teacher_mean", "teacher_std"):
            getattr(model, name).copy_(saved.tensors[f"model.{name}"])
    restore_optimizer_and_rng(saved, stepper.optimizer, stepper.generator, model.device)
    return saved.step, json.loads(saved.metadata["meta"])


@dataclass
class Run:
    """Everything one call of :func:`train` sets up before its first step."""

    model: EfficientAD
    config: TrainConfig
    out_dir: Path
    device: torch.device
    source: ImageSource
    val_source: ImageSource | None
    validation_images: int  # usable validation images (after skip_corrupt), as recorded
    penalty_paths: list[Path]
    record: TrainingRecord
    stepper: TrainStep
    meta: dict[str, Any]  # what a resumed run must agree on (JSON form)
    dp: DataParallel | None = None  # None in one process; else this rank's view of the run
    teacher_cache: TeacherCache | None = None  # filled by resume_or_start when used

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def calibrate(self) -> None:
        """The map quantiles over the validation images (Algorithm 1, lines 28-33)."""
        cfg = self.config
        quantiles = lambda: map_quantiles(self.model, self.val_source, cfg.quantile_low, cfg.quantile_high)  # noqa: E731
        # data-parallel, rank 0 computes them (exact: all pixels) and broadcasts.
        self.model.quantiles.copy_(quantiles() if self.dp is None else self.dp.on_main_then_broadcast(quantiles))
        self.model.calibrated = True
        # The decision threshold from the same normal hold-out (every rank computes the same).
        scores = holdout_scores(self.model, self.val_source)
        try:
            self.model.threshold = threshold_at_fpr(scores, cfg.threshold_fpr)
        except ValueError as e:
            self.model.threshold = None
            log.warning("no decision threshold stored: %s", e)

    def save_state(self, step: int) -> None:
        if self.dp is None:
            save_train_state(self.state_path, self.model, self.stepper, step, self.meta)
        else:  # every rank's RNG state gathered (a collective), rank 0 writes
            self.dp.save_state(
                lambda extra: save_train_state(self.state_path, self.model, self.stepper, step, self.meta, extra)
            )


def _image_sources(train_images, validation_images, model_config: ModelConfig, config: TrainConfig):
    """The training and validation sources. With ``skip_corrupt``, unreadable and too-small
    images are dropped *before* the validation hold-out is drawn, so a bad file cannot empty
    either split; a run left without validation images for its quantiles fails here, before
    any training step."""
    if not train_images:
        raise ValueError("the training set is empty: give at least one normal training image")
    size, limit, skip = model_config.image_size, config.max_preload_bytes, config.skip_corrupt
    if validation_images is None:
        given = sorted(Path(p) for p in train_images)
        usable = ImageSource(given, size, limit, skip)  # the same paths, in the same order, without a bad file
        train_paths, val_paths = split_validation(usable.paths, config.validation_fraction, config.seed)
        source, val_source = usable.subset(train_paths), usable.subset(val_paths) if val_paths else None
        skipped = len(given) - len(usable)
    else:
        train_paths, val_paths = sorted(Path(p) for p in train_images), sorted(Path(p) for p in validation_images)
        source = ImageSource(train_paths, size, limit, skip)
        val_source = _validation_source(val_paths, size, limit, skip)
        skipped = len(train_paths) + len(val_paths) - len(source) - (0 if val_source is None else len(val_source))
    if val_source is not None:
        val_source.verify()  # read again only to calibrate after training: a bad file must stop the run now
    n_val = 0 if val_source is None else len(val_source)
    log.info("training images: %d, validation images: %d, skipped: %d", len(source), n_val, skipped)
    return source, val_source, n_val


def _validation_source(paths: list[Path], size, limit: int, skip: bool) -> ImageSource | None:
    if not paths:
        return None
    # every one skipped: said now, before training, not when calibrating after it
    empty = (
        f"none of the {len(paths)} validation images is usable (all unreadable or too small), so the map "
        "quantiles could not be calibrated; give readable validation images"
    )
    return ImageSource(paths, size, limit, skip, empty_message=empty)


def _compute_settings(model: EfficientAD, config: TrainConfig, device: torch.device) -> tuple[str, str, bool]:
    """The run's precision, memory format and Winograd switch, resolved for ``device`` and logged;
    sets the switch on the student and the autoencoder (trained through it) and the frozen
    teacher (its forward on the augmented image)."""
    precision = resolve_precision(config.precision, device)
    memory_format = resolve_memory_format(config.memory_format, precision, device)
    winograd = resolve_cpu_winograd(config.cpu_winograd, precision, device)
    if winograd and config.memory_format == "auto":
        memory_format = "channels_last"  # the Winograd ops read and write NHWC: no layout round trips
    model.student.cpu_winograd = model.teacher.cpu_winograd = model.autoencoder.cpu_winograd = winograd
    log.info(
        "precision: %s (asked: %s), memory format: %s (asked: %s), convolutions: %s (cpu_winograd %s); %s",
        precision,
        config.precision,
        memory_format,
        config.memory_format,
        "Winograd" if winograd else "direct",
        config.cpu_winograd,
        f"CPU flags: {describe_cpu()}" if device.type == "cpu" else f"device: {device}",
    )
    return precision, memory_format, winograd


def setup(
    train_images,
    out_dir,
    model_config: ModelConfig,
    config: TrainConfig,
    validation_images,
    teacher,
    device: torch.device,
    dp: DataParallel | None = None,
) -> Run:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out_dir, out_dir / "curve_models"])  # left by a run killed in this folder
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    source, val_source, n_val = _image_sources(train_images, validation_images, model_config, config)
    penalties = penalty_paths(config)
    model = EfficientAD(model_config).to(device)
    choice = resolve_teacher(teacher, model_config.arch, model_config.teacher_channels)
    if choice.path is not None:
        load_teacher_weights(model.teacher, choice.path)
        log.info("teacher: %s", choice.description)
    else:
        log.warning(
            "teacher: %s -- a RANDOMLY INITIALISED teacher; accuracy will be far below the paper's", choice.description
        )
    record = TrainingRecord(
        steps=config.steps, teacher=choice.description, penalty_images=str(config.penalty_dir or "none")
    )
    precision, memory_format, winograd = _compute_settings(model, config, device)
    # JSON round trip so the comparison on resume sees lists where the config has tuples.
    meta = json.loads(
        json.dumps(
            {
                "train_config": asdict(config),
                "model_config": model_config.to_dict(),
                "teacher": record.teacher,
                "precision": precision,
                "memory_format": memory_format,
                "cpu_winograd": winograd,
            }
        )
    )
    stepper = TrainStep(model, config, generator, precision, memory_format)
    return Run(model, config, out_dir, device, source, val_source, n_val, penalties, record, stepper, meta, dp)


def _teacher_cache(run: Run) -> TeacherCache | None:
    """A :class:`TeacherCache` for as many of the run's training images as fit (None: none fit
    or data-parallel training; logged either way)."""
    n, per_image = len(run.source), TeacherCache.bytes_needed(run.model, 1)
    capacity = min(n, run.config.teacher_cache_bytes // per_image)
    if run.dp is not None or capacity == 0:
        why = (
            "data-parallel training"
            if run.dp is not None
            else f"{per_image / 2**20:.1f} MiB an image > teacher_cache_bytes"
        )
        log.info("teacher outputs on the training images: not cached (%s)", why)
        return None
    log.info(
        "teacher outputs on the training images: cached for %d of %d (%.2f GiB)",
        capacity,
        n,
        capacity * per_image / 2**30,
    )
    return TeacherCache(run.model, n, capacity)


def resume_or_start(run: Run, resume: bool) -> int:
    """The step to start from: the saved state's (``resume``), else 0 after the teacher statistics."""
    model = run.model
    model.teacher.eval()
    run.teacher_cache = _teacher_cache(run)
    keep = None if run.teacher_cache is None else run.teacher_cache.outputs
    if not resume:
        if run.dp is None:
            mean, std = teacher_channel_stats(model, run.source, keep=keep)
        else:
            mean, std = run.dp.teacher_channel_stats(model, run.source)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(std)
        return 0
    if not run.state_path.is_file():
        raise FileNotFoundError(f"cannot resume: no training state at {run.state_path}")
    step, saved = load_train_state(run.state_path, model, run.stepper)
    for key in ("model_config", "teacher"):
        if saved.get(key) != run.meta[key]:
            raise ValueError(
                f"cannot resume {run.state_path}: its {key} {saved.get(key)} differs from this run's {run.meta[key]}"
            )
    # States written before the precision was recorded were trained in float32.
    if saved.get("precision", "float32") != run.meta["precision"]:
        raise ValueError(
            f"cannot resume {run.state_path} in {run.meta['precision']}: it was trained in "
            f"{saved.get('precision', 'float32')}; pass precision={saved.get('precision', 'float32')!r} "
            "(--precision) to continue it"
        )
    if keep is not None:  # the same pass as a fresh start's, so the cached values are identical
        teacher_channel_stats(model, run.source, keep=keep)
    log.info("resuming at step %d of %d", step, run.config.steps)
    return step
