"""The shared loop of training and distillation (training/driver.py): its order of work and
where it checkpoints, on a job that records what it was asked to do."""

from __future__ import annotations

import pytest

from efficientad_ext.progress import Progress
from efficientad_ext.training.driver import drive


class RecordingJob:
    what = "recording"

    def __init__(self, total: int, checkpoint_every: int, stop_after: int | None = None, saved: int = 0, loss=1.0):
        self.total, self.checkpoint_every, self.stop_after = total, checkpoint_every, stop_after
        self.saved, self.loss, self.events = saved, loss, []

    def start(self, resume: bool) -> int:
        return self.saved if resume else 0

    def progress(self, start: int) -> Progress:
        return Progress(self.total, start=start, every=10**9)

    def step(self, step: int) -> dict[str, float]:
        self.events.append(("step", step))
        return {"loss": self.loss}

    def periodic(self, done, terms, timer) -> None:
        self.events.append(("periodic", done))

    def checkpoint(self, done, timer) -> None:
        self.events.append(("checkpoint", done))
        self.saved = done

    def out_of_time(self, done, timer) -> bool:
        return self.stop_after is not None and done >= self.stop_after

    def finish(self, start, done, terms, timer):
        self.events.append(("finish", start, done))
        return done


def _kinds(job, kind):
    return [e[1] for e in job.events if e[0] == kind]


def test_checkpoints_at_every_multiple_and_at_the_end_after_the_periodic_work():
    job = RecordingJob(total=7, checkpoint_every=3)
    assert drive(job, resume=False) == 7
    assert _kinds(job, "step") == list(range(7)) and _kinds(job, "checkpoint") == [3, 6, 7]
    i = job.events.index(("checkpoint", 3))
    assert job.events[i - 1] == ("periodic", 3)  # measured before the state that records it
    assert job.events[-1] == ("finish", 0, 7)


def test_an_early_stop_is_checkpointed_where_it_stopped_and_a_resume_goes_on_from_there():
    job = RecordingJob(total=10, checkpoint_every=4, stop_after=5)
    assert drive(job, resume=False) == 5
    assert _kinds(job, "checkpoint") == [4, 5] and job.events[-1] == ("finish", 0, 5)
    job.stop_after, job.events = None, []
    assert drive(job, resume=True) == 10
    assert _kinds(job, "step") == [5, 6, 7, 8, 9] and _kinds(job, "checkpoint") == [8, 10]
    # Stopped on a multiple: one state, not two.
    job = RecordingJob(total=10, checkpoint_every=4, stop_after=8)
    drive(job, resume=False)
    assert _kinds(job, "checkpoint") == [4, 8]
    # Nothing trained (the limit was already spent, or a resume at the stop): no new state.
    job = RecordingJob(total=10, checkpoint_every=4, stop_after=5, saved=5)
    assert drive(job, resume=True) == 5 and _kinds(job, "checkpoint") == [] and _kinds(job, "step") == []


def test_a_diverging_job_stops_before_its_state_is_written():
    job = RecordingJob(total=5, checkpoint_every=1, loss=float("nan"))
    with pytest.raises(FloatingPointError, match="recording diverged at step 1"):
        drive(job, resume=False)
    assert _kinds(job, "checkpoint") == [] and _kinds(job, "periodic") == []
