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
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import ops
from .augment import color_jitter_one_of, penalty_transform
from .checkpoint import save_model
from .data import Sample, list_images, load_image, resize_image
from .distributed import DataParallel
from .learning_curve import LearningCurve, eval_steps, evaluate_snapshot
from .files import write_atomically, write_text_atomically
from .model import EfficientAD, ModelConfig, TrainingRecord
from .progress import Progress, format_duration
from .teacher_io import load_teacher_weights
from .teachers import resolve_teacher

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
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    skip_corrupt: bool = False
    max_preload_bytes: int = 4 * 2**30
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


class ImageSource:
    """Training images resized to the model's size as uint8, preloaded when they fit in
    ``max_bytes`` (else decoded on demand)."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], max_bytes: int, skip_corrupt: bool = False) -> None:
        from .data import ImageError

        self.size = size
        self.paths: list[Path] = []
        self._cache: list[Tensor] | None = [] if len(paths) * 3 * size[0] * size[1] <= max_bytes else None
        for path in paths:
            if self._cache is None and not skip_corrupt:
                self.paths.append(Path(path))
                continue
            try:
                image = self._load(path)
            except ImageError as e:
                if not skip_corrupt:
                    raise
                log.warning("skipping unreadable image: %s", e)
                continue
            self.paths.append(Path(path))
            if self._cache is not None:
                self._cache.append(image)
        if not self.paths:
            raise ValueError("no usable training images")

    def _load(self, path: Path) -> Tensor:
        image = resize_image(load_image(path), self.size)
        return (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: Sequence[int]) -> Tensor:
        """uint8 [B, 3, H, W]."""
        if self._cache is not None:
            return torch.stack([self._cache[i] for i in indices])
        return torch.stack([self._load(self.paths[i]) for i in indices])


def split_validation(paths: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded hold-out of ``fraction`` of ``paths`` (at least one image when fraction > 0)."""
    paths = sorted(Path(p) for p in paths)
    if fraction <= 0:
        return paths, []
    if len(paths) < 2:
        raise ValueError(f"need at least 2 training images to hold out validation images, got {len(paths)}")
    n_val = max(1, round(fraction * len(paths)))
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    val = set(order[:n_val])
    return [p for i, p in enumerate(paths) if i not in val], [p for i, p in enumerate(paths) if i in val]


def penalty_batch(paths: Sequence[Path], size: tuple[int, int], generator: torch.Generator, gray: Tensor | None = None) -> Tensor:
    """Penalty images P (Algorithm 1, line 14): each original image resized straight to twice
    ``size`` (never through ``size`` first), random grayscale, centre crop; float [B, 3, *size].
    ``gray``: the grayscale draw made beforehand (see :func:`augment.penalty_transform`)."""
    h, w = size
    raw = torch.stack([resize_image(load_image(p), (2 * h, 2 * w)) for p in paths])
    return penalty_transform(raw, size, generator, gray=gray)


def to_unit_float(images_uint8: Tensor, device: torch.device) -> Tensor:
    return images_uint8.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def teacher_channel_stats(model: EfficientAD, source: ImageSource, batch_size: int = 8, *,
                          indices: Sequence[int] | None = None, reduce=None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of the teacher's output over all images of ``source``, in one
    streaming pass with float64 sums (memory independent of the number of images).

    Data-parallel training (distributed.py) passes this rank's ``indices`` and a ``reduce``
    that sums (total, total_sq, count) over the ranks before the mean and std are taken."""
    c = model.config.teacher_channels
    total = torch.zeros(c, dtype=torch.float64, device=model.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=model.device)
    count = 0
    order = list(range(len(source))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        x = to_unit_float(source.get(order[start : start + batch_size]), model.device)
        t = model.teacher.fused_forward(model.normalize(x)).double()
        total += t.sum(dim=(0, 2, 3))
        total_sq += (t * t).sum(dim=(0, 2, 3))
        count += t.shape[0] * t.shape[2] * t.shape[3]
    if reduce is not None:
        total, total_sq, count = reduce(total, total_sq, count)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


class TrainStep:
    """One optimisation step of Algorithm 1 (lines 6-27) on a batch of images."""

    def __init__(self, model: EfficientAD, config: TrainConfig, generator: torch.Generator) -> None:
        self.model, self.config, self.generator = model, config, generator
        params = list(model.student.parameters()) + list(model.autoencoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        # The modules the step runs; data-parallel training replaces them by their
        # DistributedDataParallel wrappers (same parameters, gradients averaged over ranks).
        self.student, self.autoencoder = model.student, model.autoencoder

    def __call__(self, step: int, images: Tensor, penalty: Tensor | None, *,
                 jitter: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
        """images: float [B, 3, H, W] in [0, 1]; penalty: the same for ImageNet images or None;
        jitter: the autoencoder branch's augmentation draws made beforehand (else drawn here)."""
        model, cfg = self.model, self.config
        c = model.config.teacher_channels
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        b = images.shape[0]
        augmented = color_jitter_one_of(images, self.generator, draws=jitter)
        x = model.normalize(torch.cat([images, augmented]))
        mean, std = model.teacher_mean.view(1, c, 1, 1), model.teacher_std.view(1, c, 1, 1)
        with torch.no_grad():
            teacher = (model.teacher(x) - mean) / std
        student_in = x if penalty is None else torch.cat([x, model.normalize(penalty)])
        student = self.student(student_in)
        ae = self.autoencoder(x[b:], model.feature_size)

        hard = ops.hard_feature_loss(teacher[:b], student[:b, :c], cfg.p_hard, cfg.reduction)
        pen = (student[2 * b :, :c] ** 2).mean() if penalty is not None else student.new_zeros(())
        loss_ae = ((teacher[b:] - ae) ** 2).mean()
        loss_stae = ((ae - student[b : 2 * b, c:]) ** 2).mean()
        loss = hard + pen + loss_ae + loss_stae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "hard": hard.item(), "penalty": pen.item(), "ae": loss_ae.item(), "stae": loss_stae.item()}


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


# ---------------------------------------------------------------------------- state I/O


def _save_state(path: Path, model: EfficientAD, stepper: TrainStep, step: int, meta: dict[str, Any],
                extra: dict[str, Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for prefix in ("teacher", "student", "autoencoder"):
        for k, v in getattr(model, prefix).state_dict().items():
            tensors[f"model.{prefix}.{k}"] = v.detach().cpu().contiguous()
    for k in ("teacher_mean", "teacher_std"):
        tensors[f"model.{k}"] = getattr(model, k).detach().cpu().contiguous()
    opt = stepper.optimizer.state_dict()
    for idx, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = stepper.generator.get_state()
    tensors.update(extra or {})  # data-parallel training: every rank's RNG state (distributed.py)
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    metadata = {"format": "efficientad_ext.train_state", "format_version": "1", "step": str(step),
                "param_groups": json.dumps(groups), "meta": json.dumps(meta)}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_state(path: Path, model: EfficientAD, stepper: TrainStep) -> tuple[int, dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != "efficientad_ext.train_state" or metadata.get("format_version") != "1":
            raise ValueError(f"{path} is not an efficientad_ext training state (format {metadata.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for prefix in ("teacher", "student", "autoencoder"):
            sd = {k[len(f"model.{prefix}.") :]: v for k, v in tensors.items() if k.startswith(f"model.{prefix}.")}
            getattr(model, prefix).load_state_dict(sd, strict=True)
        for k in ("teacher_mean", "teacher_std"):
            getattr(model, k).copy_(tensors[f"model.{k}"])
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v.to(model.device) if name != "step" else v
    stepper.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    stepper.generator.set_state(tensors["rng.generator"])
    return int(metadata["step"]), json.loads(metadata["meta"])


# ---------------------------------------------------------------------------- driver


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
    """Trains an EfficientAD model (Algorithm 1) and writes ``out_dir/model.safetensors``.

    Args:
        train_images: paths of normal training images.
        out_dir: where the model, the training state (for ``resume``) and ``training.json`` go.
        model_config: architecture, padding and image size (default EfficientAD-S, 256x256).
        config: hyper-parameters (default: the paper's).
        validation_images: normal images for the map quantiles; default: a seeded hold-out of
            ``config.validation_fraction`` of ``train_images``.
        teacher: None or "default" (the teacher shipped with the package; see
            :mod:`efficientad_ext.teachers`), "random" (a random initialisation, logged as a
            warning), or a weight file (see :func:`efficientad_ext.teacher_io.load_teacher_weights`).
        device: where to train.
        resume: continue from ``out_dir/train_state.safetensors``.
        curve_samples: a labelled test set for the learning curve, evaluated at the steps of
            ``config.eval_every`` / ``config.eval_at`` into ``out_dir/curve.json`` (and
            ``curve.png``); the quantiles of each point come from the validation images.
        data_parallel: train data-parallel over the ranks of the initialised
            ``torch.distributed`` process group (see :mod:`efficientad_ext.distributed`);
            None: when one with more than one rank is initialised.
    """
    model_config = model_config or ModelConfig()
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # issue 17: None in one process; else this rank's view of the data-parallel run.
    dp = DataParallel.create(config, device, data_parallel, curve=curve_samples is not None)

    if not train_images:
        raise ValueError("the training set is empty: give at least one normal training image")
    if validation_images is None:
        train_paths, val_paths = split_validation(train_images, config.validation_fraction, config.seed)
    else:
        train_paths, val_paths = sorted(Path(p) for p in train_images), sorted(Path(p) for p in validation_images)
    log.info("training images: %d, validation images: %d", len(train_paths), len(val_paths))
    source = ImageSource(train_paths, model_config.image_size, config.max_preload_bytes, config.skip_corrupt)
    val_source = ImageSource(val_paths, model_config.image_size, config.max_preload_bytes, config.skip_corrupt) if val_paths else None

    penalty_paths: list[Path] = []
    if config.penalty_dir:
        penalty_paths = list_images(config.penalty_dir)
        if not penalty_paths:
            raise ValueError(f"penalty_dir {config.penalty_dir} holds no images")
        log.info("pretraining penalty: %d images from %s", len(penalty_paths), config.penalty_dir)
    else:
        log.warning("no penalty images given: training WITHOUT the paper's ImageNet penalty term")

    model = EfficientAD(model_config).to(device)
    record = TrainingRecord(steps=config.steps, penalty_images=str(config.penalty_dir or "none"))
    choice = resolve_teacher(teacher, model_config.arch, model_config.teacher_channels)
    if choice.path is not None:
        load_teacher_weights(model.teacher, choice.path)
        log.info("teacher: %s", choice.description)
    else:
        log.warning("teacher: %s -- a RANDOMLY INITIALISED teacher; accuracy will be far below the paper's", choice.description)
    record.teacher = choice.description
    stepper = TrainStep(model, config, generator)
    state_path = out_dir / STATE_FILE
    # JSON round trip so the comparison on resume sees lists where the config has tuples.
    meta = json.loads(json.dumps({"train_config": asdict(config), "model_config": model_config.to_dict(), "teacher": record.teacher}))

    step = 0
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: no training state at {state_path}")
        step, saved = _load_state(state_path, model, stepper)
        for key in ("model_config", "teacher"):
            if saved.get(key) != meta[key]:
                raise ValueError(f"cannot resume {state_path}: its {key} {saved.get(key)} differs from this run's {meta[key]}")
        log.info("resuming at step %d of %d", step, config.steps)
    else:
        model.teacher.eval()
        mean, std = teacher_channel_stats(model, source) if dp is None else dp.teacher_channel_stats(model, source)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(std)

    model.teacher.eval()
    model.student.train()
    model.autoencoder.train()
    curve = None
    curve_at = eval_steps(config.steps, config.eval_every, config.eval_at)
    if curve_samples is not None and curve_at:
        if val_source is None:
            raise ValueError("a learning curve needs validation images for its map quantiles (validation_fraction > 0)")
        curve = LearningCurve(out_dir, curve_at, {"title": f"{model_config.arch}, teacher: {record.teacher}",
                                                  "teacher": record.teacher, "train_config": meta["train_config"],
                                                  "model_config": meta["model_config"], "test_images": len(curve_samples)})
        if resume:
            curve.resume(step)

    def curve_point() -> dict[str, Any]:
        def calibrate() -> None:
            model.quantiles.copy_(map_quantiles(model, val_source, config.quantile_low, config.quantile_high))
            model.calibrated = True

        metrics = evaluate_snapshot(model, calibrate, curve_samples)
        if config.eval_keep_models:
            model.record = record
            save_model(model, out_dir / "curve_models" / f"model_step{step:06d}.safetensors")
        return metrics

    if dp is not None:  # issue 17: DDP wrappers, this rank's own RNG stream (restored on resume)
        dp.start(stepper, state_path if resume else None)
    progress = Progress(config.steps, start=step, every=config.log_every, stream=None if dp is None else dp.progress_stream())
    t0 = time.perf_counter()
    eval_seconds = 0.0  # spent on the learning curve, not counted as training time
    start_step = step
    terms: dict[str, float] = {}
    while step < config.steps:
        jitter = None
        if dp is not None:  # issue 17: this rank's share of the global batch (the same draws, sliced)
            images, penalty, jitter = dp.draw_share(generator, source, penalty_paths, model_config.image_size)
        else:
            idx = torch.randint(len(source), (config.batch_size,), generator=generator).tolist()
            images = to_unit_float(source.get(idx), device)
            penalty = None
            if penalty_paths:
                pidx = torch.randint(len(penalty_paths), (config.batch_size,), generator=generator).tolist()
                penalty = penalty_batch([penalty_paths[i] for i in pidx], model_config.image_size, generator).to(device)
        terms = stepper(step, images, penalty, jitter=jitter)
        if dp is not None:  # issue 17: the global batch's losses, the same on every rank
            terms = dp.mean_terms(terms)
        step += 1
        if not all(math.isfinite(v) for v in terms.values()):
            raise FloatingPointError(f"training diverged at step {step}: {terms}")
        progress.update(step, **terms)
        if step % config.checkpoint_every == 0 or step == config.steps:
            if dp is None:
                _save_state(state_path, model, stepper, step, meta)
            else:  # issue 17: every rank's RNG state gathered (a collective), rank 0 writes
                dp.save_state(lambda extra: _save_state(state_path, model, stepper, step, meta, extra))
        if curve is not None and curve.due(step):
            t_eval = time.perf_counter()
            curve.add(step, t_eval - t0 - eval_seconds, terms, curve_point)
            eval_seconds += time.perf_counter() - t_eval
    progress.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    model.eval()

    if val_source is not None:
        quantiles = lambda: map_quantiles(model, val_source, config.quantile_low, config.quantile_high)  # noqa: E731
        # issue 17: data-parallel, rank 0 computes them (exact: all pixels) and broadcasts.
        model.quantiles.copy_(quantiles() if dp is None else dp.on_main_then_broadcast(quantiles))
        model.calibrated = True
    else:
        log.warning("no validation images: map quantiles left uncalibrated")
    record.extra = {
        "seconds": round(seconds, 2),
        "steps_this_run": step - start_step,
        "seconds_per_step": round(seconds / max(step - start_step, 1), 4),
        "final_losses": terms,
        "train_images": len(source),
        "validation_images": len(val_paths),
        "device": str(device),
        "train_config": asdict(config),
    }
    if dp is not None:  # issue 17: the run's ranks in the record; only rank 0 writes files
        record.extra["data_parallel"] = dp.describe()
    model.record = record
    if dp is None or dp.is_main:
        save_model(model, out_dir / MODEL_FILE)
        write_text_atomically(out_dir / "training.json", json.dumps(asdict(record), indent=2))
    log.info("trained %d steps in %s; model written to %s", step - start_step, format_duration(seconds), out_dir / MODEL_FILE)
    return model

