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
import os
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor

from efficientad_ext.data import resize_image
from efficientad_ext.data.image_source import ImageSource, to_unit_float
from efficientad_ext.distillation.config import (
    PDN_STRIDE,
    RECORD_FILE,
    SNAPSHOT_DIR,
    TEACHER_FILE,
    TEACHER_SIZE,
    DistillConfig,
    snapshot_name,
)
from efficientad_ext.distillation.extractors import TargetHead
from efficientad_ext.distillation.run_setup import Run, resume_or_start, save_distill_state, setup, target_cache
from efficientad_ext.distillation.step import holdout_loss
from efficientad_ext.distillation.targets import DistillTargets, gray3
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.teacher_file import save_teacher
from efficientad_ext.models.pdn import PDN
from efficientad_ext.progress import Progress, format_duration
from efficientad_ext.training.augment import draw_resized_crops, resized_crops
from efficientad_ext.training.driver import LoopTimer, drive

log = logging.getLogger("efficientad_ext.distill")


def _holdout_evaluator(run: Run, targets: DistillTargets):
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


def _step_function(run: Run, targets: DistillTargets, cache: Tensor | None):
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
            xe = torch.where(g, gray3(xe), xe)
            x = resize_image(xe, (TEACHER_SIZE, TEACHER_SIZE)).clamp_(0, 1)  # the same crop, at the teacher's size
            return {"loss": run.step_fn(x, targets.compute(xe), crops)}
        x = to_unit_float(run.src_t.get(idx), device)
        x = torch.where(g, gray3(x), x)
        if cache is not None:
            y = cache[idx].to(device).float()
            if bool(gray.any()):
                gi = gray.nonzero().flatten().tolist()
                y[gi] = targets.compute(gray3(to_unit_float(run.src_e.get([idx[i] for i in gi]), device)))
        else:
            xe = to_unit_float(run.src_e.get(idx), device)
            y = targets.compute(torch.where(g, gray3(xe), xe))
        return {"loss": run.step_fn(x, y, crops)}

    return one_step


class DistillationJob:
    """Algorithm 3 as a :class:`~efficientad_ext.training.driver.Job`: the steps of ``run``,
    the held-out loss every ``eval_every`` steps, the state file, and the teacher file at the end.
    ``record.seconds`` counts the loop's time over all runs of a resumed distillation."""

    what = "distillation"

    def __init__(self, run: Run, save_dtype: torch.dtype) -> None:
        self.run, self.save_dtype = run, save_dtype
        self.total, self.checkpoint_every = run.config.steps, run.config.checkpoint_every
        self.window: list[float] = []  # step losses since the last loss-history entry
        self.head: TargetHead  # Psi's standardisation and projection; set by start

    def start(self, resume: bool) -> int:
        run = self.run
        step, self.head = resume_or_start(run, resume)
        targets = DistillTargets(run.extractor, self.head, run.device)
        self.one_step = _step_function(run, targets, target_cache(run, targets))
        self.evaluate = _holdout_evaluator(run, targets)
        if not resume:
            self.evaluate(step)
        self.seconds_before = run.record.seconds
        run.teacher.train()
        return step

    def progress(self, start: int) -> Progress:
        return Progress(self.total, start=start, label="distill", every=self.run.config.log_every)

    def step(self, step: int) -> dict[str, float]:
        return self.one_step(step)

    def _seconds(self, timer: LoopTimer) -> float:
        return self.seconds_before + timer.seconds()

    def periodic(self, done: int, terms: dict[str, float], timer: LoopTimer) -> None:
        cfg, record = self.run.config, self.run.record
        self.window.append(terms["loss"])
        if done % cfg.log_every == 0 or done == cfg.steps:
            record.final_loss = sum(self.window) / len(self.window)
            record.loss_history.append((done, record.final_loss))
            self.window.clear()
        if done % cfg.eval_every == 0 or done == cfg.steps:
            self.evaluate(done)
        if cfg.snapshot_every and done % cfg.snapshot_every == 0:
            self._snapshot(done, timer)

    def _snapshot(self, done: int, timer: LoopTimer) -> None:
        """The teacher after ``done`` steps as a teacher file of its own, with the record so far,
        for measuring the teacher over the distillation while it runs (a resume that redoes a
        step rewrites its snapshot with the same weights)."""
        run = self.run
        run.record.steps_done, run.record.seconds = done, round(self._seconds(timer), 2)
        path = save_teacher(run.teacher, run.out_dir / SNAPSHOT_DIR / snapshot_name(done), run.record, self.save_dtype)
        log.info("teacher snapshot at step %d: %s", done, path)

    def checkpoint(self, done: int, timer: LoopTimer) -> None:
        run = self.run
        run.record.steps_done, run.record.seconds = done, round(self._seconds(timer), 2)
        save_distill_state(
            run.state_path, run.teacher, self.head, run.step_fn, run.generator, done, run.record, run.meta
        )

    def out_of_time(self, done: int, timer: LoopTimer) -> bool:
        # Per run, as ``train --time-limit``: a resumed run gets the whole limit again (the
        # record's ``seconds`` still counts every run's training).
        limit = self.run.config.time_limit_s
        if limit is None or timer.seconds() < limit:
            return False
        log.warning("time limit of %.0f s reached after %d of %d steps", limit, done, self.total)
        return True

    def finish(self, start: int, done: int, terms: dict[str, float], timer: LoopTimer) -> PDN:
        record = self.run.record
        if not record.holdout_history or record.holdout_history[-1][0] != done:
            self.evaluate(done)  # the record always ends with the final teacher's held-out loss
        record.steps_done, record.seconds = done, round(self._seconds(timer), 2)
        return _finalise(self.run, done, self.save_dtype)


def _finalise(run: Run, step: int, save_dtype: torch.dtype) -> PDN:
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
    run = setup(images, out_dir, config or DistillConfig(), torch.device(device), command)
    return drive(DistillationJob(run, save_dtype), resume)
