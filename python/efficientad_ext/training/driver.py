"""The driver Algorithms 1 and 3 share: start or resume, seeded steps, a divergence check,
progress, periodic work, checkpoints and the finish, always in that order.

A job (:class:`Job`) says what each of those is for its algorithm; :func:`drive` owns their
order, so training and distillation resume, checkpoint and stop the same way:

- ``start(resume)`` restores the job's state file (or starts from step 0) and does all the
  work before the first step; the loop's timer starts after it.
- Each ``step(s)`` (0-based) draws everything random from the job's own generator, so a run
  resumed from a checkpoint (written after the step it records) replays the same steps.
- A non-finite loss stops the run with FloatingPointError before anything is checkpointed:
  the last state on disk is from before the divergence.
- After each step, ``periodic`` (evaluations, loss logs) runs before ``checkpoint``: a state
  file records every measurement up to its step, and a run killed between the two redoes the
  measurement on resume instead of losing it.
- A job that stops before ``total`` (``out_of_time``: a step or time limit) is checkpointed
  at the step it stopped at, then finished as at its end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from efficientad_ext.progress import Progress

Result = TypeVar("Result", covariant=True)


@dataclass
class LoopTimer:
    """Seconds of this run's loop, excluding what was passed to :meth:`exclude` (evaluations)."""

    start: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def exclude(self, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        self.excluded += time.perf_counter() - t


class Job(Protocol[Result]):
    """One resumable optimisation run, as :func:`drive` runs it."""

    what: str  # "training", "distillation": names the run in the divergence error
    total: int  # the step count the run ends at
    checkpoint_every: int  # steps between state files (and always at ``total``)

    def start(self, resume: bool) -> int:
        """Restores the state file (``resume``) or starts afresh; returns the steps already done."""
        ...

    def progress(self, start: int) -> Progress:
        """The progress lines of the loop, starting at ``start``."""
        ...

    def step(self, step: int) -> dict[str, float]:
        """One optimisation step (0-based); its loss terms."""
        ...

    def periodic(self, done: int, terms: dict[str, float], timer: LoopTimer) -> None:
        """The work due after ``done`` steps (evaluations, logs), before any checkpoint."""
        ...

    def checkpoint(self, done: int, timer: LoopTimer) -> None:
        """Writes the resumable state after ``done`` steps (atomically)."""
        ...

    def out_of_time(self, done: int, timer: LoopTimer) -> bool:
        """True to stop before ``total`` (a time limit); the run still finishes normally."""
        ...

    def finish(self, start: int, done: int, terms: dict[str, float], timer: LoopTimer) -> Result:
        """Writes the run's result after its last step and returns it."""
        ...


def drive(job: Job[Result], resume: bool) -> Result:
    """Runs ``job`` from its start (or its state file, ``resume``) to ``job.total`` steps or its
    time limit, and returns what its ``finish`` writes."""
    start = job.start(resume)
    timer = LoopTimer()
    progress = job.progress(start)
    step, terms = start, {}
    while step < job.total and not job.out_of_time(step, timer):
        terms = job.step(step)
        step += 1
        if not all(math.isfinite(v) for v in terms.values()):
            raise FloatingPointError(f"{job.what} diverged at step {step}: {terms}")
        progress.update(step, **terms)
        job.periodic(step, terms, timer)
        if step % job.checkpoint_every == 0 or step == job.total:
            job.checkpoint(step, timer)
    if start < step < job.total and step % job.checkpoint_every != 0:
        job.checkpoint(step, timer)  # stopped early: a resume continues from here, losing nothing
    progress.close()
    return job.finish(start, step, terms, timer)
