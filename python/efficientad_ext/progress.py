"""Progress of long loops (training steps, images): tqdm's bar on a terminal; in a log (no
terminal) the same line each time the count passes a multiple of ``every`` (and at the end),
so a log stays readable whatever the count advances by per update (steps, or a batch of images)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """``update(done, **terms)`` after each step or batch (``done``: the count so far);
    ``close()`` at the end. ``every=None``: a line at every tenth of ``total``."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        label: str = "train",
        stream: TextIO | None = None,
        every: int | None = 50,
        unit: str = "steps",
    ) -> None:
        every = max(1, total // 10) if every is None else max(1, every)
        self.total, self.start, self.label, self.unit, self.every = total, start, label, unit, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._next_line = (start // every + 1) * every  # the next multiple of ``every`` to log at
        self.t0 = time.perf_counter()
        self._format = tqdm.format_meter
        self.bar = (
            tqdm(total=total, initial=start, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)
            if self.tty
            else None
        )

    def update(self, step: int, **terms: float) -> None:
        postfix = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
        elif step >= self._next_line or step == self.total:
            self._next_line = (step // self.every + 1) * self.every
            line = self._format(
                step,
                self.total,
                time.perf_counter() - self.t0,
                prefix=self.label,
                unit=self.unit,
                initial=self.start,
                postfix=postfix or None,
                ncols=0,
            )
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
