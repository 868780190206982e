"""The loop Algorithms 1 and 3 share: seeded steps, a divergence check, progress, checkpoints.

A step function draws everything random from the run's generator, so a run resumed from a
checkpoint (written after the step it records) replays the same steps. A non-finite loss
stops the run with FloatingPointError before anything is checkpointed: the last state on
disk is from before the divergence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from efficientad_ext.progress import Progress


@dataclass
class LoopTimer:
    """Training seconds of this run, excluding the time spent in evaluations."""

    start: float = field(default_factory=time.perf_counter)
    excluded: float = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def exclude(self, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        self.excluded += time.perf_counter() - t


def run_steps(
    what: str,
    step: int,
    total: int,
    one_step: Callable[[int], dict[str, float]],
    after_step: Callable[[int, dict[str, float]], None],
    progress: Progress,
    stop_early: Callable[[int], bool] = lambda step: False,
) -> tuple[int, dict[str, float]]:
    """Runs ``one_step(step)`` (0-based; returns its loss terms) until ``total`` steps are done
    or ``stop_early(step)``; then ``after_step(steps done, terms)`` (checkpoints, evaluations).
    Returns the steps done and the last terms."""
    terms: dict[str, float] = {}
    while step < total and not stop_early(step):
        terms = one_step(step)
        step += 1
        if not all(math.isfinite(v) for v in terms.values()):
            raise FloatingPointError(f"{what} diverged at step {step}: {terms}")
        progress.update(step, **terms)
        after_step(step, terms)
    progress.close()
    return step, terms
