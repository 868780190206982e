"""Many models: every category under an MVTec-style root, one model per rank (one per GPU under
``torchrun --nproc-per-node <GPUs>``), a summary table at the end
(``efficientad train-all ROOT --out OUT``; without torchrun the categories run one after another).

Invariants:

* A category is a subfolder of the root holding ``train/good`` (MVTec AD, LOCO or VisA-style
  category folders all do); they are taken in name order.
* Assignment: longest training set first, each to the rank with the fewest training images so
  far (ties: the lower rank). Deterministic, so every rank computes the same assignment
  without talking to the others.
* Each category trains alone in its rank's process (``train(..., data_parallel=False)``) into
  ``OUT/<category>/``; when its test set exists it is evaluated (no heatmaps), and the row is
  written atomically to ``OUT/<category>/result.json``. A category with a result is skipped
  on a re-run; one with a training state and no result resumes from it. A failing category is
  recorded as failed and the others go on.
* The ranks meet once, at the end (a gloo barrier with a long timeout: categories take hours);
  rank 0 then reads every row and writes ``OUT/summary.json`` and ``OUT/summary.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from efficientad_ext.data import open_dataset
from efficientad_ext.data.images import list_images
from efficientad_ext.evaluation.evaluator import evaluate
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.model_file import load_model
from efficientad_ext.training.config import STATE_FILE
from efficientad_ext.training.trainer import train

log = logging.getLogger("efficientad_ext.training.many_models")

RESULT = "result.json"
FAILED = "failed.json"  # a failed category's row; the next run tries that category again
COLUMNS = (
    "category",
    "status",
    "rank",
    "device",
    "train_images",
    "train_seconds",
    "image_auroc",
    "pixel_auroc",
    "au_pro",
)


def find_categories(root: str | os.PathLike[str]) -> list[Path]:
    """The category folders under ``root`` (those with ``train/good``), in name order."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset root {r} does not exist" if not r.exists() else f"{r} is not a folder")
    cats = sorted((p for p in r.iterdir() if (p / "train" / "good").is_dir()), key=lambda p: p.name)
    if not cats:
        raise FileNotFoundError(
            f"no categories under {r}: expected <root>/<category>/train/good/ (the MVTec AD layout)"
        )
    return cats


def assign(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Category indices per rank: longest first onto the least loaded rank (module docstring)."""
    load, ranks = [0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        ranks[r].append(i)
        load[r] += sizes[i]
    return ranks


def _train_one(
    category: Path, out: Path, model_config, config, teacher, device, evaluate_test: bool, rank: int
) -> dict[str, Any]:

    splits = open_dataset(category)
    row: dict[str, Any] = {
        "category": category.name,
        "rank": rank,
        "device": str(device),
        "train_images": len(splits.train),
    }
    t0 = time.perf_counter()
    train(
        [s.path for s in splits.train],
        out,
        model_config,
        config,
        validation_images=[s.path for s in splits.validation] or None,
        teacher=teacher,
        device=device,
        resume=(out / STATE_FILE).is_file(),
        data_parallel=False,
    )
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    if evaluate_test and splits.test:
        metrics = evaluate(
            load_model(out / "model.safetensors", device=device), splits.test, out / "eval", write_images=False
        )
        row.update({k: metrics[k] for k in ("image_auroc", "pixel_auroc", "au_pro") if k in metrics})
    return row


def _train_or_reuse(
    cat: Path, out: Path, model_config, config, teacher, device, evaluate_test: bool, rank: int
) -> dict[str, Any]:
    """One category's row: from its finished result file, or trained now (a failure is a row too)."""
    result = out / cat.name / RESULT
    if result.is_file():
        log.info("%s: done before (%s), skipped", cat.name, result)
        return json.loads(result.read_text())
    try:
        row = {
            **_train_one(cat, out / cat.name, model_config, config, teacher, device, evaluate_test, rank),
            "status": "ok",
        }
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        # One bad category (no images, corrupt files, a diverging run) must not cost the others
        # their models: reported in the table. Anything else (CUDA out of memory, a bug) stops
        # the job: carrying on would fail the next categories for the same reason, or worse.
        log.error("%s failed: %s\n%s", cat.name, e, traceback.format_exc())
        row = {"category": cat.name, "rank": rank, "device": str(device), "status": f"failed: {e}"}
        write_text_atomically(out / cat.name / FAILED, json.dumps(row, indent=2))
    else:
        write_text_atomically(result, json.dumps(row, indent=2))
        (out / cat.name / FAILED).unlink(missing_ok=True)
    return row


def _write_summary(out: Path, cats: Sequence[Path], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every category's row (this rank's, and the other ranks' from their files) into
    ``summary.json`` and ``summary.csv``; returns them in category order."""
    by_name = {r["category"]: r for r in rows}
    for cat in cats:  # the other ranks' rows, from their result files
        for name in (RESULT, FAILED):
            if cat.name not in by_name and (out / cat.name / name).is_file():
                by_name[cat.name] = json.loads((out / cat.name / name).read_text())
    table = [
        by_name.get(c.name, {"category": c.name, "status": "failed: no result (see that rank's log)"}) for c in cats
    ]
    write_text_atomically(out / "summary.json", json.dumps(table, indent=2))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows([[r.get(k, "") for k in COLUMNS] for r in table])
    write_text_atomically(out / "summary.csv", buf.getvalue())
    return table


def train_all(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_config=None,
    config=None,
    *,
    teacher: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    evaluate_test: bool = True,
) -> list[dict[str, Any]]:
    """Trains one model per category of ``root`` into ``out_dir/<category>/``, this rank's
    share of them (every rank of the initialised process group calls it; one process without a
    group trains all). Returns every category's row on rank 0 (after the others finished),
    this rank's rows elsewhere."""
    cats = find_categories(root)
    out = Path(out_dir)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    sizes = [len(list_images(c / "train" / "good")) for c in cats]  # images only, as training reads them
    mine = [cats[i] for i in assign(sizes, world)[rank]]
    log.info("rank %d of %d: categories %s", rank, world, ", ".join(c.name for c in mine) or "none")
    rows = [_train_or_reuse(cat, out, model_config, config, teacher, device, evaluate_test, rank) for cat in mine]
    if world > 1:
        dist.barrier()
    if rank != 0:
        return rows
    return _write_summary(out, cats, rows)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The terminal summary: one line per category."""

    def cell(r: dict[str, Any], k: str) -> str:
        v = r.get(k, "")
        return f"{v:.4f}" if isinstance(v, float) and k != "train_seconds" else str(v)

    lines = [list(COLUMNS)] + [[cell(r, k) for k in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)
