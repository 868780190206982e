"""Training, the paper's Algorithm 1, every detail:

1. Teacher: frozen (distilled, supplied, or random when nothing is supplied: logged loudly).
2. Teacher per-channel mean/std over the training images in one streaming pass (float64
   sums and sums of squares; batches, so memory does not grow with the set).
3. Per step: L_hard (hard-feature loss at p_hard on the student's first C channels vs the
   normalised teacher; per-sample thresholds by default when batch > 1) + the ImageNet penalty
   mean(S(P)[:, :C]^2) when penalty images are given; the autoencoder sees the image after one
   of brightness/contrast/saturation (factor U(0.8, 1.2)); L_AE = mean((T^(aug) - A(aug))^2),
   L_STAE = mean((A(aug) - S(aug)[:, C:])^2); student and autoencoder updated together by Adam
   (lr 1e-4, weight decay 1e-5), lr x0.1 after 95% of the steps.
4. Map quantiles q(0.9), q(0.995) of the raw ST and AE maps (padded and resized as in
   inference) over held-out normal validation images (default: 10% of the training images,
   never the test set), with the exact quantile op.

Runs are seeded and resumable: the training state (weights, Adam state, step, RNG states)
is checkpointed atomically every ``checkpoint_every`` steps, and ``resume=True`` continues
from it bit-for-bit as if never interrupted.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from efficientad_ext import ops
from efficientad_ext.data import Sample, list_images, load_image, resize_image
from efficientad_ext.training.distributed import DataParallel
from efficientad_ext.evaluation.threshold import threshold_at_fpr
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.stale_files import remove_stale_temp_files
from efficientad_ext.formats.model_file import save_model
from efficientad_ext.formats.teacher_file import load_teacher_weights
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig, TrainingRecord
from efficientad_ext.training.precision import MEMORY_FORMATS, PRECISIONS, autocast, describe_cpu, resolve_memory_format, resolve_precision, torch_memory_format
from efficientad_ext.progress import Progress, format_duration
from efficientad_ext.training.augment import color_jitter_one_of, penalty_transform
from efficientad_ext.training.driver import LoopTimer, run_steps
from efficientad_ext.data.image_source import ImageSource, split_validation, to_unit_float
from efficientad_ext.training.learning_curve import LearningCurve, eval_steps, evaluate_snapshot
from efficientad_ext.training.state import read_state, restore_optimizer_and_rng, save_state
from efficientad_ext.training.teacher_choice import resolve_teacher

log = logging.getLogger("efficientad_ext.train")

STATE_FILE = "train_state.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of Algorithm 1 (the paper's values are the defaults)."""

    steps: int = 70_000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_drop_at: float = 0.95  # fraction of the steps after which lr is multiplied by lr_drop_factor
    lr_drop_factor: float = 0.1
    p_hard: float = 0.999
    hard_reduction: str = "auto"  # "auto": batch for batch_size 1, per_sample above
    penalty_dir: str | None = None
    validation_fraction: float = 0.1
    quantile_low: float = 0.9
    quantile_high: float = 0.995
    threshold_fpr: float = 0.01  # the decision threshold: this share of the hold-out's normal images flagged
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    skip_corrupt: bool = False
    max_preload_bytes: int = 4 * 2**30
    teacher_cache_bytes: int = 4 * 2**30  # TeacherCache when it fits (0: never cache)
    precision: str = "auto"  # "auto" (bf16 autocast on native-bf16 CPUs and CUDA), "float32" or "bfloat16"
    memory_format: str = "auto"  # "auto" (channels-last with bf16 and on AVX-512 CPUs), "channels_last" or "contiguous"
    eval_every: int = 0  # learning curve: evaluate the labelled set every N steps (0: never)
    eval_at: tuple[int, ...] = ()  # ... and at these steps (e.g. 250, 500, 1000, ...)
    eval_keep_models: bool = False  # also write each curve point's calibrated model to curve_models/

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.hard_reduction not in ("auto", "batch", "per_sample"):
            raise ValueError(f"hard_reduction must be auto, batch or per_sample, got {self.hard_reduction!r}")
        if not 0.0 <= self.p_hard <= 1.0 or not 0.0 <= self.quantile_low < self.quantile_high <= 1.0:
            raise ValueError("p_hard must be in [0, 1] and 0 <= quantile_low < quantile_high <= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if not 0.0 < self.threshold_fpr < 1.0:
            raise ValueError(f"threshold_fpr must be in (0, 1), got {self.threshold_fpr}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.eval_every < 0 or any(int(s) < 1 for s in self.eval_at):
            raise ValueError(f"eval_every must be >= 0 and eval_at steps >= 1, got {self.eval_every} and {list(self.eval_at)}")

    @property
    def reduction(self) -> str:
        if self.hard_reduction != "auto":
            return self.hard_reduction
        return "batch" if self.batch_size == 1 else "per_sample"

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``."""
        return self.lr * (self.lr_drop_factor if step >= int(self.lr_drop_at * self.steps) else 1.0)


def penalty_batch(paths: Sequence[Path], size: tuple[int, int], generator: torch.Generator, gray: Tensor | None = None) -> Tensor:
    """Penalty images P (Algorithm 1, line 14): each original image resized straight to twice
    ``size`` (never through ``size`` first), random grayscale, centre crop; float [B, 3, *size].
    ``gray``: the grayscale draw made beforehand (see :func:`augment.penalty_transform`)."""
    h, w = size
    raw = torch.stack([resize_image(load_image(p), (2 * h, 2 * w)) for p in paths])
    return penalty_transform(raw, size, generator, gray=gray)


@torch.no_grad()
def teacher_channel_stats(model: EfficientAD, source: ImageSource, batch_size: int = 8, *,
                          indices: Sequence[int] | None = None, reduce=None,
                          keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the teacher's output over all images of ``source``, in one
    streaming pass with float64 sums (memory independent of the number of images).

    Data-parallel training (distributed.py) passes this rank's ``indices`` and a ``reduce``
    that sums (total, total_sq, count) over the ranks before the mean and std are taken.
    ``keep``: a float32 [n, C, h, w] tensor that receives the raw output of images 0..n-1
    (the :class:`TeacherCache`; the same pass, so caching costs no extra teacher forward)."""
    c = model.config.teacher_channels
    total = torch.zeros(c, dtype=torch.float64, device=model.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=model.device)
    count = 0
    order = list(range(len(source))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        x = to_unit_float(source.get(chunk), model.device)
        t = model.teacher.fused_forward(model.normalize(x))
        if keep is not None:  # the images the cache has rows for (all, or the first n)
            rows = [j for j, i in enumerate(chunk) if i < keep.shape[0]]
            keep[[chunk[j] for j in rows]] = t[rows].float()
        t = t.double()
        total += t.sum(dim=(0, 2, 3))
        total_sq += (t * t).sum(dim=(0, 2, 3))
        count += t.shape[0] * t.shape[2] * t.shape[3]
    if reduce is not None:
        total, total_sq, count = reduce(total, total_sq, count)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


class TeacherCache:
    """The frozen teacher's raw output on every training image, computed once.

    Algorithm 1 runs the teacher on the drawn training image at every step. The teacher is
    frozen and that branch never augments the image (the preloaded image, resized once), so
    the output per image is a constant: it is computed in the teacher-statistics pass (the
    fused float32 op, batches of 8 in index order: the same values on every start and resume,
    which keeps resume bit-for-bit) and looked up per step, saving one teacher forward per
    image per step. The teacher still runs every step on the augmented image.

    ``TrainConfig.teacher_cache_bytes`` bounds its memory (``C * h * w * 4`` bytes an image): when
    not every image fits, the first ``capacity`` images (by index) are cached and a batch with
    any other image runs the teacher as without a cache.
    """

    def __init__(self, model: EfficientAD, count: int, capacity: int | None = None) -> None:
        h, w = model.feature_size
        self.capacity = count if capacity is None else max(0, min(count, capacity))
        self.outputs = torch.empty(self.capacity, model.config.teacher_channels, h, w, device=model.device)

    @staticmethod
    def bytes_needed(model: EfficientAD, count: int) -> int:
        h, w = model.feature_size
        return count * model.config.teacher_channels * h * w * 4

    def holds(self, indices: Sequence[int]) -> bool:
        """Whether every image of ``indices`` is cached."""
        return all(i < self.capacity for i in indices)

    def __getitem__(self, indices: Sequence[int]) -> Tensor:
        return self.outputs[list(indices)]


class TrainStep:
    """One optimisation step of Algorithm 1 (lines 6-27) on a batch of images.

    ``precision`` ("float32" or "bfloat16", see :mod:`efficientad_ext.training.precision`): the
    networks' forward passes under bf16 autocast or not. The weights, Adam's state, the losses
    and their reductions are float32 either way: every network output is cast to float32
    before the losses, so the hard-feature quantile is taken exactly on float32 differences.

    ``memory_format`` ("contiguous" or "channels_last", see
    :func:`efficientad_ext.training.precision.resolve_memory_format`): the layout of the three networks'
    weights and of every image batch the step feeds them. Channels-last converts the model's
    parameters in place (their values are unchanged; the model file and the training state are
    written contiguous either way).
    """

    def __init__(self, model: EfficientAD, config: TrainConfig, generator: torch.Generator, precision: str = "float32",
                 memory_format: str = "contiguous") -> None:
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16 (resolve 'auto' first), got {precision!r}")
        if memory_format not in ("contiguous", "channels_last"):
            raise ValueError(f"memory_format must be contiguous or channels_last (resolve 'auto' first), got {memory_format!r}")
        self.model, self.config, self.generator, self.precision = model, config, generator, precision
        self.memory_format = torch_memory_format(memory_format)
        for net in (model.teacher, model.student, model.autoencoder):
            net.to(memory_format=self.memory_format)
        params = list(model.student.parameters()) + list(model.autoencoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        # The modules the step runs; data-parallel training replaces them by their
        # DistributedDataParallel wrappers (same parameters, gradients averaged over ranks).
        self.student, self.autoencoder = model.student, model.autoencoder

    def __call__(self, step: int, images: Tensor, penalty: Tensor | None, *,
                 jitter: tuple[Tensor, Tensor] | None = None, teacher_images: Tensor | None = None) -> dict[str, float]:
        """images: float [B, 3, H, W] in [0, 1]; penalty: the same for ImageNet images or None;
        jitter: the autoencoder branch's augmentation draws made beforehand (else drawn here);
        teacher_images: the frozen teacher's raw output on ``images`` when it is cached
        (:class:`TeacherCache`), else the teacher runs on them here."""
        model, cfg = self.model, self.config
        c = model.config.teacher_channels
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        b = images.shape[0]
        augmented = color_jitter_one_of(images, self.generator, draws=jitter)
        x = model.normalize(images).contiguous(memory_format=self.memory_format)
        x_aug = model.normalize(augmented).contiguous(memory_format=self.memory_format)
        mean, std = model.teacher_mean.view(1, c, 1, 1), model.teacher_std.view(1, c, 1, 1)
        with torch.no_grad(), autocast(self.precision, model.device):
            if teacher_images is None:
                teacher = model.teacher(torch.cat([x, x_aug])).float()
            else:
                teacher = torch.cat([teacher_images, model.teacher(x_aug).float()])
            teacher = (teacher - mean) / std
        # The student's batch is [images, penalty images, augmented images]: the first two groups
        # are read on its first C output channels only, the last on its last C only, so its last
        # layer computes just those (PDN.forward's heads; the gradients are the full layer's).
        parts = [x] if penalty is None else [x, model.normalize(penalty).contiguous(memory_format=self.memory_format)]
        first = sum(p.shape[0] for p in parts)
        with autocast(self.precision, model.device):
            student_first, student_aug = self.student(torch.cat([*parts, x_aug]), heads=((first, 0, c), (b, c, 2 * c)))
            ae = self.autoencoder(x_aug, model.feature_size)
        student_first, student_aug, ae = student_first.float(), student_aug.float(), ae.float()

        hard = ops.hard_feature_loss(teacher[:b], student_first[:b], cfg.p_hard, cfg.reduction)
        pen = (student_first[b:] ** 2).mean() if penalty is not None else student_first.new_zeros(())
        loss_ae = ((teacher[b:] - ae) ** 2).mean()
        loss_stae = ((ae - student_aug) ** 2).mean()
        loss = hard + pen + loss_ae + loss_stae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "hard": hard.item(), "penalty": pen.item(), "ae": loss_ae.item(), "stae": loss_stae.item()}


@torch.no_grad()
def holdout_scores(model: EfficientAD, source: ImageSource, batch_size: int = 8) -> Tensor:
    """Image scores of ``source``'s images (float32 inference, as evaluation computes them)."""
    scores = []
    for start in range(0, len(source), batch_size):
        x = to_unit_float(source.get(range(start, min(start + batch_size, len(source)))), model.device)
        scores.append(model.infer(x, dtype=torch.float32).score.float().cpu())
    return torch.cat(scores)


@torch.no_grad()
def map_quantiles(model: EfficientAD, source: ImageSource, low: float, high: float, batch_size: int = 8) -> Tensor:
    """[q_st_a, q_st_b, q_ae_a, q_ae_b] over all pixels of the validation maps (exact)."""
    st_maps, ae_maps = [], []
    for start in range(0, len(source), batch_size):
        x = to_unit_float(source.get(range(start, min(start + batch_size, len(source)))), model.device)
        st, ae = model.raw_maps(model.normalize(x))
        st_maps.append(st.flatten())
        ae_maps.append(ae.flatten())
    q_st = ops.quantile(torch.cat(st_maps), [low, high])
    q_ae = ops.quantile(torch.cat(ae_maps), [low, high])
    return torch.cat([q_st, q_ae]).float()


# ---------------------------------------------------------------------------- state


_STATE_KIND = "train_state"


def _save_state(path: Path, model: EfficientAD, stepper: TrainStep, step: int, meta: dict[str, Any],
                extra: dict[str, Tensor] | None = None) -> None:
    modules = {f"model.{name}": getattr(model, name) for name in ("teacher", "student", "autoencoder")}
    stats = {f"model.{name}": getattr(model, name) for name in ("teacher_mean", "teacher_std")}
    stats.update(extra or {})  # data-parallel training: every rank's RNG state (distributed.py)
    save_state(path, _STATE_KIND, step, modules, stepper.optimizer, stepper.generator, stats, {"meta": json.dumps(meta)})


def _load_state(path: Path, model: EfficientAD, stepper: TrainStep) -> tuple[int, dict[str, Any]]:
    saved = read_state(path, _STATE_KIND, "training state")
    with torch.no_grad():
        for name in ("teacher", "student", "autoencoder"):
            getattr(model, name).load_state_dict(saved.module_state(f"model.{name}"), strict=True)
        for name in ("teacher_mean", "teacher_std"):
            getattr(model, name).copy_(saved.tensors[f"model.{name}"])
    restore_optimizer_and_rng(saved, stepper.optimizer, stepper.generator, model.device)
    return saved.step, json.loads(saved.metadata["meta"])


# ---------------------------------------------------------------------------- driver


@dataclass
class _Run:
    """Everything one call of :func:`train` sets up before its first step."""

    model: EfficientAD
    config: TrainConfig
    out_dir: Path
    device: torch.device
    source: ImageSource
    val_source: ImageSource | None
    validation_images: int  # paths given or held out (before any skip_corrupt), as recorded
    penalty_paths: list[Path]
    record: TrainingRecord
    stepper: TrainStep
    meta: dict[str, Any]  # what a resumed run must agree on (JSON form)
    dp: DataParallel | None = None  # None in one process; else this rank's view of the run
    teacher_cache: TeacherCache | None = None  # filled by _resume_or_start when used

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
            _save_state(self.state_path, self.model, self.stepper, step, self.meta)
        else:  # every rank's RNG state gathered (a collective), rank 0 writes
            self.dp.save_state(lambda extra: _save_state(self.state_path, self.model, self.stepper, step, self.meta, extra))


def _image_sources(train_images, validation_images, model_config: ModelConfig, config: TrainConfig):
    if not train_images:
        raise ValueError("the training set is empty: give at least one normal training image")
    if validation_images is None:
        train_paths, val_paths = split_validation(train_images, config.validation_fraction, config.seed)
    else:
        train_paths, val_paths = sorted(Path(p) for p in train_images), sorted(Path(p) for p in validation_images)
    log.info("training images: %d, validation images: %d", len(train_paths), len(val_paths))
    size, limit = model_config.image_size, config.max_preload_bytes
    source = ImageSource(train_paths, size, limit, config.skip_corrupt)
    val_source = ImageSource(val_paths, size, limit, config.skip_corrupt) if val_paths else None
    return source, val_source, len(val_paths)


def _penalty_paths(config: TrainConfig) -> list[Path]:
    if not config.penalty_dir:
        log.warning("no penalty images given: training WITHOUT the paper's ImageNet penalty term")
        return []
    paths = list_images(config.penalty_dir)
    if not paths:
        raise ValueError(f"penalty_dir {config.penalty_dir} holds no images")
    log.info("pretraining penalty: %d images from %s", len(paths), config.penalty_dir)
    return paths


def _setup(train_images, out_dir, model_config: ModelConfig, config: TrainConfig, validation_images, teacher,
           device: torch.device, dp: DataParallel | None = None) -> _Run:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files([out_dir, out_dir / "curve_models"])  # left by a run killed in this folder
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    source, val_source, n_val = _image_sources(train_images, validation_images, model_config, config)
    penalty_paths = _penalty_paths(config)
    model = EfficientAD(model_config).to(device)
    choice = resolve_teacher(teacher, model_config.arch, model_config.teacher_channels)
    if choice.path is not None:
        load_teacher_weights(model.teacher, choice.path)
        log.info("teacher: %s", choice.description)
    else:
        log.warning("teacher: %s -- a RANDOMLY INITIALISED teacher; accuracy will be far below the paper's", choice.description)
    record = TrainingRecord(steps=config.steps, teacher=choice.description, penalty_images=str(config.penalty_dir or "none"))
    precision = resolve_precision(config.precision, device)
    memory_format = resolve_memory_format(config.memory_format, precision, device)
    log.info("precision: %s (asked: %s), memory format: %s (asked: %s); %s", precision, config.precision,
             memory_format, config.memory_format,
             f"CPU flags: {describe_cpu()}" if device.type == "cpu" else f"device: {device}")
    # JSON round trip so the comparison on resume sees lists where the config has tuples.
    meta = json.loads(json.dumps({"train_config": asdict(config), "model_config": model_config.to_dict(), "teacher": record.teacher,
                                  "precision": precision, "memory_format": memory_format}))
    stepper = TrainStep(model, config, generator, precision, memory_format)
    return _Run(model, config, out_dir, device, source, val_source, n_val, penalty_paths, record, stepper, meta, dp)


def _teacher_cache(run: _Run) -> TeacherCache | None:
    """A :class:`TeacherCache` for as many of the run's training images as fit (None: none fit
    or data-parallel training; logged either way)."""
    n, per_image = len(run.source), TeacherCache.bytes_needed(run.model, 1)
    capacity = min(n, run.config.teacher_cache_bytes // per_image)
    if run.dp is not None or capacity == 0:
        why = "data-parallel training" if run.dp is not None else f"{per_image / 2**20:.1f} MiB an image > teacher_cache_bytes"
        log.info("teacher outputs on the training images: not cached (%s)", why)
        return None
    log.info("teacher outputs on the training images: cached for %d of %d (%.2f GiB)", capacity, n, capacity * per_image / 2**30)
    return TeacherCache(run.model, n, capacity)


def _resume_or_start(run: _Run, resume: bool) -> int:
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
    step, saved = _load_state(run.state_path, model, run.stepper)
    for key in ("model_config", "teacher"):
        if saved.get(key) != run.meta[key]:
            raise ValueError(f"cannot resume {run.state_path}: its {key} {saved.get(key)} differs from this run's {run.meta[key]}")
    # States written before the precision was recorded were trained in float32.
    if saved.get("precision", "float32") != run.meta["precision"]:
        raise ValueError(f"cannot resume {run.state_path} in {run.meta['precision']}: it was trained in "
                         f"{saved.get('precision', 'float32')}; pass precision={saved.get('precision', 'float32')!r} "
                         "(--precision) to continue it")
    if keep is not None:  # the same pass as a fresh start's, so the cached values are identical
        teacher_channel_stats(model, run.source, keep=keep)
    log.info("resuming at step %d of %d", step, run.config.steps)
    return step


def _learning_curve(run: _Run, curve_samples: Sequence[Sample] | None, step: int, resume: bool) -> LearningCurve | None:
    cfg = run.config
    at = eval_steps(cfg.steps, cfg.eval_every, cfg.eval_at)
    if curve_samples is None or not at:
        return None
    if run.val_source is None:
        raise ValueError("a learning curve needs validation images for its map quantiles (validation_fraction > 0)")
    arch, teacher = run.meta["model_config"]["arch"], run.record.teacher
    curve = LearningCurve(run.out_dir, at, {"title": f"{arch}, teacher: {teacher}", "teacher": teacher,
                                            "train_config": run.meta["train_config"], "model_config": run.meta["model_config"],
                                            "test_images": len(curve_samples)})
    if resume:
        curve.resume(step)
    return curve


def _curve_point(run: _Run, curve_samples: Sequence[Sample], step: int) -> dict[str, Any]:
    metrics = evaluate_snapshot(run.model, run.calibrate, curve_samples)
    if run.config.eval_keep_models:
        run.model.record = run.record
        save_model(run.model, run.out_dir / "curve_models" / f"model_step{step:06d}.safetensors")
    return metrics


def _step(run: _Run, step: int) -> dict[str, float]:
    """One optimisation step on the next batch; its loss terms."""
    if run.dp is None:
        idx, images, penalty = _batch(run)
        cache = run.teacher_cache
        cached = cache[idx] if cache is not None and cache.holds(idx) else None
        return run.stepper(step, images, penalty, teacher_images=cached)
    # this rank's share of the global batch (the same draws, sliced), and the global
    # batch's losses, the same on every rank.
    images, penalty, jitter = run.dp.draw_share(run.stepper.generator, run.source, run.penalty_paths, run.model.config.image_size)
    return run.dp.mean_terms(run.stepper(step, images, penalty, jitter=jitter))


def _batch(run: _Run) -> tuple[list[int], Tensor, Tensor | None]:
    """One step's training-image indices, images and penalty images, drawn from the run's generator."""
    cfg, size, generator = run.config, run.model.config.image_size, run.stepper.generator
    idx = torch.randint(len(run.source), (cfg.batch_size,), generator=generator).tolist()
    images = to_unit_float(run.source.get(idx), run.device)
    if not run.penalty_paths:
        return idx, images, None
    pidx = torch.randint(len(run.penalty_paths), (cfg.batch_size,), generator=generator).tolist()
    return idx, images, penalty_batch([run.penalty_paths[i] for i in pidx], size, generator).to(run.device)


def _loop(run: _Run, step: int, curve: LearningCurve | None, curve_samples) -> tuple[int, dict[str, float], float]:
    """The optimisation steps; returns the steps done, the last loss terms and the training
    seconds (learning-curve evaluations excluded)."""
    cfg, model = run.config, run.model
    model.teacher.eval()
    model.student.train()
    model.autoencoder.train()
    timer = LoopTimer()

    def after_step(done: int, terms: dict[str, float]) -> None:
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            run.save_state(done)
        if curve is not None and curve.due(done):
            timer.exclude(lambda: curve.add(done, timer.seconds(), terms, lambda: _curve_point(run, curve_samples, done)))

    stream = None if run.dp is None else run.dp.progress_stream()  # rank 0's progress only
    progress = Progress(cfg.steps, start=step, every=cfg.log_every, stream=stream)
    done, terms = run_steps("training", step, cfg.steps, lambda s: _step(run, s), after_step, progress)
    return done, terms, timer.seconds()


def _finalise(run: _Run, start_step: int, step: int, terms: dict[str, float], seconds: float) -> EfficientAD:
    """Calibrates the quantiles and writes the model file and ``training.json``."""
    model, record = run.model, run.record
    model.eval()
    if run.val_source is not None:
        run.calibrate()
    else:
        log.warning("no validation images: map quantiles left uncalibrated")
    record.extra = {
        "seconds": round(seconds, 2),
        "steps_this_run": step - start_step,
        "seconds_per_step": round(seconds / max(step - start_step, 1), 4),
        "final_losses": terms,
        "train_images": len(run.source),
        "validation_images": run.validation_images,
        "device": str(run.device),
        "precision": run.meta["precision"],
        "memory_format": run.meta["memory_format"],
        "cpu_flags": describe_cpu() if run.device.type == "cpu" else None,
        "teacher_cache": run.teacher_cache is not None,
        "teacher_cache_images": 0 if run.teacher_cache is None else run.teacher_cache.capacity,
        "train_config": asdict(run.config),
    }
    if run.dp is not None:  # the run's ranks in the record; only rank 0 writes files
        record.extra["data_parallel"] = run.dp.describe()
    model.record = record
    if run.dp is None or run.dp.is_main:
        save_model(model, run.out_dir / MODEL_FILE)
        write_text_atomically(run.out_dir / "training.json", json.dumps(asdict(record), indent=2))
    log.info("trained %d steps in %s; model written to %s", step - start_step, format_duration(seconds), run.out_dir / MODEL_FILE)
    return model


def train(
    train_images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    *,
    validation_images: Sequence[str | os.PathLike[str]] | None = None,
    teacher: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    curve_samples: Sequence[Sample] | None = None,
    data_parallel: bool | None = None,
) -> EfficientAD:
    """Trains an EfficientAD model (Algorithm 1) on a list of images and writes
    ``out_dir/model.safetensors`` (:func:`efficientad_ext.train` takes a dataset folder).

    Args:
        train_images: paths of normal training images.
        out_dir: where the model, the training state (for ``resume``) and ``training.json`` go.
        model_config: architecture, padding and image size (default EfficientAD-S, 256x256).
        config: hyper-parameters (default: the paper's).
        validation_images: normal images for the map quantiles; default: a seeded hold-out of
            ``config.validation_fraction`` of ``train_images``.
        teacher: None or "default" (the teacher shipped with the package; see
            :mod:`efficientad_ext.training.teacher_choice`), "random" (a random initialisation,
            logged as a warning), or a weight file (see
            :func:`efficientad_ext.formats.teacher_file.load_teacher_weights`).
        device: where to train.
        resume: continue from ``out_dir/train_state.safetensors``.
        curve_samples: a labelled test set for the learning curve, evaluated at the steps of
            ``config.eval_every`` / ``config.eval_at`` into ``out_dir/curve.json`` (and
            ``curve.png``); the quantiles of each point come from the validation images.
        data_parallel: train data-parallel over the ranks of the initialised
            ``torch.distributed`` process group (see :mod:`efficientad_ext.training.distributed`);
            None: when one with more than one rank is initialised.
    """
    model_config, config = model_config or ModelConfig(), config or TrainConfig()
    # None in one process; else this rank's view of the data-parallel run.
    dp = DataParallel.create(config, device, data_parallel, curve=curve_samples is not None)
    run = _setup(train_images, out_dir, model_config, config, validation_images, teacher, torch.device(device), dp)
    start_step = _resume_or_start(run, resume)
    curve = _learning_curve(run, curve_samples, start_step, resume)
    if dp is not None:  # DDP wrappers, this rank's own RNG stream (restored on resume)
        dp.start(run.stepper, run.state_path if resume else None)
    step, terms, seconds = _loop(run, start_step, curve, curve_samples)
    return _finalise(run, start_step, step, terms, seconds)
