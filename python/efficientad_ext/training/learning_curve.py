"""A learning curve during training: at chosen steps, calibrate the map quantiles on the
training hold-out (never the test set), evaluate a labelled set and append the metrics to
``curve.json`` (and ``curve.png`` when matplotlib is installed).

Evaluation draws no random numbers and leaves the networks in training mode afterwards, so a
run with a curve takes exactly the same optimisation steps as one without (tested).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from efficientad_ext.evaluation.evaluator import evaluate
from efficientad_ext.formats.atomic import write_atomically, write_text_atomically

log = logging.getLogger("efficientad_ext.learning_curve")

CURVE_JSON = "curve.json"
CURVE_PNG = "curve.png"
METRIC_KEYS = ("image_auroc", "pixel_auroc", "au_pro")


def eval_steps(total_steps: int, every: int = 0, at: Sequence[int] = ()) -> list[int]:
    """The sorted steps (1-based, <= ``total_steps``) at which the curve is evaluated:
    every ``every`` steps (0: none) plus the steps listed in ``at``."""
    if every < 0:
        raise ValueError(f"eval_every must be >= 0, got {every}")
    bad = [s for s in at if s < 1]
    if bad:
        raise ValueError(f"eval_at steps must be >= 1, got {bad}")
    steps = set(s for s in at if s <= total_steps)
    if every:
        steps.update(range(every, total_steps + 1, every))
    return sorted(steps)


class LearningCurve:
    """The points of one run's curve, persisted atomically after every point.

    ``evaluate_point(step)`` is given by the trainer: it returns the metrics dict of the model
    as it is at ``step``.
    """

    def __init__(self, out_dir: Path, steps: Sequence[int], meta: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.steps = set(steps)
        self.meta = meta
        self.points: list[dict[str, Any]] = []

    def resume(self, step: int) -> None:
        """Keeps the points of an earlier run up to ``step`` (the resumed state's step)."""
        path = self.out_dir / CURVE_JSON
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
            points = saved["points"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s (%s); the curve restarts at step %d", path, e, step)
            return
        self.points = [p for p in points if isinstance(p, dict) and int(p.get("step", 0)) <= step]

    def due(self, step: int) -> bool:
        return step in self.steps

    def add(
        self, step: int, seconds: float, losses: dict[str, float], evaluate_point: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        metrics = evaluate_point()
        point = {
            "step": step,
            "train_seconds": round(seconds, 2),
            "losses": losses,
            **{k: v for k, v in metrics.items() if k != "scores"},
        }
        self.points = [p for p in self.points if p["step"] != step] + [point]
        self.points.sort(key=lambda p: p["step"])
        self.write()
        shown = ", ".join(
            [f"{k} {point[k]:.4f}" for k in METRIC_KEYS if k in point]
            + [
                f"{name} map image_auroc {m['image_auroc']:.4f}"
                for name, m in point.get("branches", {}).items()
                if name != "combined"
            ]
        )
        log.info("curve at step %d: %s", step, shown or "no metrics (see curve.json)")
        return point

    def write(self) -> None:
        write_text_atomically(self.out_dir / CURVE_JSON, json.dumps({**self.meta, "points": self.points}, indent=2))
        try:
            plot_curve(self.points, self.out_dir / CURVE_PNG, title=str(self.meta.get("title", "")))
        except ImportError:
            log.info("matplotlib is not installed: %s not drawn (pip install matplotlib)", CURVE_PNG)


def plot_curve(points: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Draws the metrics against the step (log axis) into ``path`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    labels = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "au_pro": "AU-PRO (FPR<=0.3)"}
    for key in METRIC_KEYS:
        xs = [p["step"] for p in points if key in p]
        ys = [p[key] for p in points if key in p]
        if xs:
            ax.plot(xs, ys, marker="o", label=labels[key])
    ax.set_xscale("log")
    # Ticks at the evaluated steps only, as plain numbers (the log axis's own minor labels overlap).
    steps = sorted({p["step"] for p in points})
    ax.set_xticks(steps, [str(s) for s in steps], minor=False)
    ax.set_xticks([], minor=True)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("training step")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    fig.tight_layout()
    write_atomically(Path(path), lambda tmp: fig.savefig(str(tmp), format="png"))


@torch.no_grad()
def evaluate_snapshot(model, calibrate: Callable[[], None], samples, batch_size: int = 8) -> dict[str, Any]:
    """Calibrates ``model``'s quantiles (``calibrate``), evaluates it on ``samples`` and puts it
    back in training mode (teacher stays in eval mode)."""
    was_training = model.student.training
    model.eval()
    try:
        calibrate()
        return evaluate(model, samples, out_dir=None, batch_size=batch_size, write_images=False)
    finally:
        if was_training:
            model.student.train()
            model.autoencoder.train()
        model.teacher.eval()
