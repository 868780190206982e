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
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from efficientad_ext.data import Sample
from efficientad_ext.data.image_source import to_unit_float
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.model_file import save_model
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig
from efficientad_ext.progress import Progress, format_duration
from efficientad_ext.training.config import MODEL_FILE, TrainConfig
from efficientad_ext.training.distributed import DataParallel
from efficientad_ext.training.driver import LoopTimer, drive
from efficientad_ext.training.learning_curve import LearningCurve, eval_steps, evaluate_snapshot
from efficientad_ext.training.penalty import penalty_batch
from efficientad_ext.training.precision import describe_cpu
from efficientad_ext.training.run_setup import Run, resume_or_start, setup

log = logging.getLogger("efficientad_ext.train")


def _learning_curve(run: Run, curve_samples: Sequence[Sample] | None, step: int, resume: bool) -> LearningCurve | None:
    cfg = run.config
    at = eval_steps(cfg.steps, cfg.eval_every, cfg.eval_at)
    if curve_samples is None or not at:
        return None
    if run.val_source is None:
        raise ValueError("a learning curve needs validation images for its map quantiles (validation_fraction > 0)")
    arch, teacher = run.meta["model_config"]["arch"], run.record.teacher
    curve = LearningCurve(
        run.out_dir,
        at,
        {
            "title": f"{arch}, teacher: {teacher}",
            "teacher": teacher,
            "train_config": run.meta["train_config"],
            "model_config": run.meta["model_config"],
            "test_images": len(curve_samples),
        },
    )
    if resume:
        curve.resume(step)
    return curve


def _curve_point(run: Run, curve_samples: Sequence[Sample], step: int) -> dict[str, Any]:
    metrics = evaluate_snapshot(run.model, run.calibrate, curve_samples)
    if run.config.eval_keep_models:
        run.model.record = run.record
        save_model(run.model, run.out_dir / "curve_models" / f"model_step{step:06d}.safetensors")
    return metrics


def _step(run: Run, step: int) -> dict[str, float]:
    """One optimisation step on the next batch; its loss terms."""
    if run.dp is None:
        idx, images, penalty = _batch(run)
        cache = run.teacher_cache
        cached = cache[idx] if cache is not None and cache.holds(idx) else None
        return run.stepper(step, images, penalty, teacher_images=cached)
    # this rank's share of the global batch (the same draws, sliced), and the global
    # batch's losses, the same on every rank.
    images, penalty, jitter = run.dp.draw_share(
        run.stepper.generator, run.source, run.penalty_paths, run.model.config.image_size
    )
    return run.dp.mean_terms(run.stepper(step, images, penalty, jitter=jitter))


def _batch(run: Run) -> tuple[list[int], Tensor, Tensor | None]:
    """One step's training-image indices, images and penalty images, drawn from the run's generator."""
    cfg, size, generator = run.config, run.model.config.image_size, run.stepper.generator
    idx = torch.randint(len(run.source), (cfg.batch_size,), generator=generator).tolist()
    images = to_unit_float(run.source.get(idx), run.device)
    if not run.penalty_paths:
        return idx, images, None
    pidx = torch.randint(len(run.penalty_paths), (cfg.batch_size,), generator=generator).tolist()
    return idx, images, penalty_batch([run.penalty_paths[i] for i in pidx], size, generator).to(run.device)


class TrainingJob:
    """Algorithm 1 as a :class:`~efficientad_ext.training.driver.Job`: the steps of ``run``,
    the learning-curve points, the training state, and the calibrated model file at the end."""

    what = "training"

    def __init__(self, run: Run, curve_samples: Sequence[Sample] | None) -> None:
        self.run, self.curve_samples = run, curve_samples
        self.total, self.checkpoint_every = run.config.steps, run.config.checkpoint_every
        self.curve: LearningCurve | None = None

    def start(self, resume: bool) -> int:
        run = self.run
        step = resume_or_start(run, resume)
        self.curve = _learning_curve(run, self.curve_samples, step, resume)
        if run.dp is not None:  # DDP wrappers, this rank's own RNG stream (restored on resume)
            run.dp.start(run.stepper, run.state_path if resume else None)
        run.model.teacher.eval()
        run.model.student.train()
        run.model.autoencoder.train()
        return step

    def progress(self, start: int) -> Progress:
        stream = None if self.run.dp is None else self.run.dp.progress_stream()  # rank 0's progress only
        return Progress(self.total, start=start, every=self.run.config.log_every, stream=stream)

    def step(self, step: int) -> dict[str, float]:
        return _step(self.run, step)

    def periodic(self, done: int, terms: dict[str, float], timer: LoopTimer) -> None:
        curve = self.curve
        if curve is not None and curve.due(done):  # its evaluation time is not training time
            point = lambda: _curve_point(self.run, self.curve_samples, done)  # noqa: E731
            timer.exclude(lambda: curve.add(done, timer.seconds(), terms, point))

    def checkpoint(self, done: int, timer: LoopTimer) -> None:
        self.run.save_state(done)

    def out_of_time(self, done: int, timer: LoopTimer) -> bool:
        cfg = self.run.config
        if cfg.stop_at is not None and done >= cfg.stop_at:
            if done < self.total:
                log.info("stopping at step %d of the %d-step schedule (stop_at)", done, self.total)
            return True
        if cfg.time_limit_s is not None and timer.seconds() >= cfg.time_limit_s:
            log.warning("time limit of %.0f s reached after %d of %d steps", cfg.time_limit_s, done, self.total)
            return True
        return False

    def finish(self, start: int, done: int, terms: dict[str, float], timer: LoopTimer) -> EfficientAD:
        """Calibrates the quantiles and writes the model file and ``training.json``."""
        return _finalise(self.run, start, done, terms, timer.seconds())


def _finalise(run: Run, start_step: int, step: int, terms: dict[str, float], seconds: float) -> EfficientAD:
    """Calibrates the quantiles and writes the model file and ``training.json``."""
    model, record = run.model, run.record
    model.eval()
    if run.val_source is not None:
        run.calibrate()
    else:
        log.warning("no validation images: map quantiles left uncalibrated")
    record.steps = step  # fewer than the schedule's when the run stopped early (stop_at, time limit)
    record.extra = {
        "schedule_steps": run.config.steps,
        "seconds": round(seconds, 2),
        "steps_this_run": step - start_step,
        "seconds_per_step": round(seconds / max(step - start_step, 1), 4),
        "final_losses": terms,
        "train_images": len(run.source),
        "validation_images": run.validation_images,
        "device": str(run.device),
        "precision": run.meta["precision"],
        "memory_format": run.meta["memory_format"],
        "cpu_winograd": run.meta["cpu_winograd"],
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
    log.info(
        "trained %d steps in %s; model written to %s",
        step - start_step,
        format_duration(seconds),
        run.out_dir / MODEL_FILE,
    )
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
    run = setup(train_images, out_dir, model_config, config, validation_images, teacher, torch.device(device), dp)
    return drive(TrainingJob(run, curve_samples), resume)
