"""A dependency-free progress line: step, loss terms, steps/s and ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Redraws one line on a terminal; prints a line every ``every`` steps otherwise (logs)."""

    def __init__(self, total: int, start: int = 0, label: str = "train", stream: TextIO | None = None, every: int = 50,
                 unit: str = "steps") -> None:
        self.total, self.start, self.label, self.unit = total, start, label, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.t0 = time.perf_counter()
        self._last_draw = 0.0

    def update(self, step: int, **terms: float) -> None:
        now = time.perf_counter()
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        parts = "".join(f"{k} {v:.4g} " for k, v in terms.items())
        line = f"{self.label} {step}/{self.total} | {parts}| {rate:.2f} {self.unit}/s | ETA {format_duration(eta)}"
        if self.tty:
            if now - self._last_draw > 0.2 or step == self.total:
                self.stream.write("\r" + line.ljust(120))
                self.stream.flush()
                self._last_draw = now
        elif step % self.every == 0 or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
