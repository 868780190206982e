"""Sharded, resumable scoring of a folder of images over the ranks of a torchrun job
(``torchrun --nproc-per-node N -m efficientad_ext infer MODEL IMAGES --out OUT``).

Invariants:

* **Split.** The input list is ``list_images(IMAGES)`` (sorted by name). The images not yet
  scored are split round-robin over the ranks by their position in that list; every rank
  computes the same split because all ranks read the finished shards before any rank writes
  (a barrier between the two).
* **Decoding** happens in DataLoader workers; a rank decodes only its share. An image that
  cannot be decoded is not scored: it is recorded with its error and listed in ``corrupt.csv``.
* **Shards.** A rank writes its results in chunks of ``chunk_size`` images to
  ``OUT/shards/rank<r>-<run>-<n>.csv``, each written atomically (complete or absent), with the
  exact float score (``repr``). A preempted job loses at most one chunk per rank; a re-run
  reads every shard and skips the images in them (scored or corrupt).
* **Merge.** After a barrier rank 0 writes ``OUT/scores.csv`` (columns ``path,score``, the
  score as ``%.6g``, plus ``is_anomalous`` and ``normalized_score`` when the model has a
  decision threshold: the one-process ``infer``'s file) in input order, and ``corrupt.csv``
  (``path,error``), both atomically.
* **Heatmaps** (unless ``--no-images``) use the one-process ``infer``'s fixed colour scale,
  map values [0, :data:`~efficientad_ext.inference.folder.HEATMAP_VMAX`] (see
  :mod:`efficientad_ext.inference.folder`), so a PNG is the same whichever rank or run
  drew it. They are a second pass, after the merge, over each rank's share of the scored images
  whose PNG is missing. The scale in use is kept in ``OUT/heatmaps/.vmax``; when a re-run finds
  another one there (a folder written on an older scale), the old PNGs are deleted first, so no
  PNG on another scale survives.
* Scores do not depend on how images are batched (the networks treat each image alone),
  so the merged file equals the one-process file bit for bit.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from efficientad_ext.data.batches import batches
from efficientad_ext.data.dataset import ImageDataset
from efficientad_ext.data.images import list_images
from efficientad_ext.data.layouts import Sample
from efficientad_ext.evaluation.visualize import heatmap_name, save_heatmap_png
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.formats.model_file import load_model
from efficientad_ext.inference.folder import HEATMAP_VMAX, score_table

log = logging.getLogger("efficientad_ext.inference.sharded")

# The default's cap on decoding workers per rank, so that a many-core node does not start a
# process per core for every rank (each holds its own decode buffers); --workers overrides it.
MAX_DEFAULT_WORKERS = 8
SHARDS = "shards"
SHARD_COLUMNS = ["path", "score", "map_max", "error"]
VMAX_FILE = ".vmax"


@dataclass
class ShardedResult:
    images: int  # in the input folder
    scored: int  # with a score in scores.csv
    scored_this_run: int  # by this rank in this run (scores and heatmap pass)
    skipped: int  # already in a shard when this run started
    corrupt: int
    seconds: float


def default_workers(local_world_size: int) -> int:
    """DataLoader workers per rank: this node's CPUs shared among its ranks, at least one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(local_world_size, 1)))


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_shards(out_dir: Path) -> dict[str, dict[str, str]]:
    """Every finished row under ``out_dir/shards``, by path (temporary files of interrupted
    writes start with '.' and are ignored)."""
    rows: dict[str, dict[str, str]] = {}
    for f in sorted((out_dir / SHARDS).glob("rank*.csv")):
        for row in csv.DictReader(f.open(newline="")):
            rows.setdefault(row["path"], row)
    return rows


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomically(path, buf.getvalue())


def _dataset(paths: Sequence[Path], size: tuple[int, int]) -> ImageDataset:
    """Every image of the folder by its position; a corrupt one is an item with its error."""
    return ImageDataset([Sample(path=p, label=0, defect_type="images") for p in paths], size, report_errors=True)


@torch.no_grad()
def _infer(model, positions: Sequence[int], items: Sequence[dict]):
    """The readable items' (position, image) pairs, their maps [n, H, W] and scores [n]."""
    good = [(pos, it["image"]) for pos, it in zip(positions, items, strict=True) if not it["error"]]
    if not good:
        return [], None, None
    result = model.infer(torch.stack([image for _, image in good]), dtype=torch.float32)
    return good, result.anomaly_map[:, 0].float().cpu(), result.score.float().cpu()


def _score_share(
    model,
    paths: Sequence[Path],
    mine: Sequence[int],
    out: Path,
    rank: int,
    batch_size: int,
    workers: int,
    chunk_size: int,
) -> None:
    """Scores this rank's images ``mine`` into shard files of ``chunk_size`` rows under
    ``out/shards`` (a corrupt image is a row with its error), each written atomically."""
    size = model.config.image_size
    run = f"{time.time_ns():x}-{os.getpid()}"
    pending: list[list[str]] = []
    chunks = 0

    def flush() -> None:
        nonlocal chunks, pending
        if pending:
            _write_csv(out / SHARDS / f"rank{rank:05d}-{run}-{chunks:06d}.csv", SHARD_COLUMNS, pending)
            chunks, pending = chunks + 1, []

    dataset = _dataset(paths, size)
    for positions, items in batches(dataset, batch_size, indices=mine, workers=workers, label=f"infer (rank {rank})"):
        good, maps, scores = _infer(model, positions, items)
        for pos, item in zip(positions, items, strict=True):
            if item["error"]:
                log.warning("skipping corrupt image: %s", item["error"])
                pending.append([str(paths[pos]), "", "", item["error"]])
        for (pos, _), m, s in zip(good, maps if maps is not None else [], scores if scores is not None else []):
            pending.append([str(paths[pos]), repr(float(s)), repr(float(m.max())), ""])
        if len(pending) >= chunk_size:
            flush()
    flush()


def _merge_shards(model, paths: Sequence[Path], out: Path, rank: int):
    """Every rank's shard rows, checked complete; rank 0 writes ``scores.csv`` and
    ``corrupt.csv`` from them. Returns (rows by path, scored (path, row) pairs, corrupt count)."""
    rows = read_shards(out)
    missing = [str(p) for p in paths if str(p) not in rows]
    if missing:
        raise RuntimeError(
            f"{len(missing)} images have no result after every rank finished, e.g. {missing[0]}: "
            "were the ranks given different image folders or output folders?"
        )
    scored = [(str(p), rows[str(p)]) for p in paths if not rows[str(p)]["error"]]
    corrupt = [(str(p), rows[str(p)]["error"]) for p in paths if rows[str(p)]["error"]]
    if rank == 0:
        threshold = None if model.threshold is None else model.threshold.value
        header, table = score_table([p for p, _ in scored], [float(r["score"]) for _, r in scored], threshold)
        _write_csv(out / "scores.csv", header, table)
        _write_csv(out / "corrupt.csv", ["path", "error"], corrupt)
    return rows, scored, len(corrupt)


def sharded_infer(
    model_path: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    workers: int | None = None,
    write_images: bool = True,
    chunk_size: int = 256,
    allow_unverified: bool = False,
) -> ShardedResult:
    """Scores ``images`` (a folder) with the model file ``model_path`` on this rank's share;
    see the module docstring. Every rank of the initialised process group must call it (one
    process without a group scores everything). Returns this rank's view of the job."""

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    t0 = time.perf_counter()
    rank, world = _rank_and_world()
    out = Path(out_dir)
    model = load_model(model_path, device=device, allow_unverified=allow_unverified)
    paths = list_images(images)
    if not paths:
        raise FileNotFoundError(f"no images found in {images}")
    workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", world))) if workers is None else workers
    size = model.config.image_size

    done = read_shards(out)
    _barrier()  # every rank has read the same finished shards before any rank writes new ones
    remaining = [i for i, p in enumerate(paths) if str(p) not in done]
    mine = remaining[rank::world]
    log.info(
        "rank %d of %d: %d of %d images to score (%d already scored)",
        rank,
        world,
        len(mine),
        len(paths),
        len(paths) - len(remaining),
    )
    _score_share(model, paths, mine, out, rank, batch_size, workers, chunk_size)
    _barrier()  # every shard is written

    rows, scored, corrupt = _merge_shards(model, paths, out, rank)
    if write_images and scored:
        _heatmaps(model, paths, rows, out, size, batch_size, workers, rank, world)
    _barrier()  # the files are complete when any rank returns
    return ShardedResult(
        images=len(paths),
        scored=len(scored),
        scored_this_run=len(mine),
        skipped=len(paths) - len(remaining),
        corrupt=corrupt,
        seconds=time.perf_counter() - t0,
    )


def _heatmaps(model, paths, rows, out: Path, size, batch_size: int, workers: int, rank: int, world: int) -> None:
    """The second pass: heatmap PNGs on the fixed colour scale (module docstring)."""

    vmax = HEATMAP_VMAX  # the plain ``infer`` path's fixed scale, not the folder's maximum
    folder = out / "heatmaps"
    marker = folder / VMAX_FILE
    if rank == 0:
        if not marker.is_file() or marker.read_text().strip() != repr(vmax):
            for old in folder.glob("*.png"):  # drawn on another scale
                old.unlink()
            write_text_atomically(marker, repr(vmax) + "\n")
    _barrier()  # stale PNGs are gone before any rank looks for missing ones
    need = [i for i, p in enumerate(paths) if not rows[str(p)]["error"] and not (folder / heatmap_name(p)).is_file()]
    _barrier()  # every rank has its list before any rank writes
    for positions, items in batches(
        _dataset(paths, size), batch_size, indices=need[rank::world], workers=workers, label=f"heatmaps (rank {rank})"
    ):
        good, maps, _ = _infer(model, positions, items)
        for (pos, image), m in zip(good, maps if maps is not None else []):
            save_heatmap_png(image, m, folder / heatmap_name(paths[pos]), vmin=0.0, vmax=vmax)
