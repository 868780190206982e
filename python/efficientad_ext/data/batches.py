"""The one batch loop: every pass over a dataset in order (teacher statistics, map quantiles,
hold-out scores, eval, infer, sharded infer) goes through :func:`batches`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from efficientad_ext.progress import Progress


class IndexedDataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


def _as_list(items: list[Any]) -> list[Any]:
    return items  # items stay as the dataset made them; the caller stacks what it needs


def batches(
    dataset: IndexedDataset,
    batch_size: int,
    *,
    indices: Sequence[int] | None = None,
    workers: int = 0,
    label: str | None = None,
    unit: str = "images",
    stream: Any = None,
) -> Iterator[tuple[list[int], list[Any]]]:
    """``(indices, items)`` per batch of at most ``batch_size`` items, in the order of
    ``indices`` (default: all, in order). ``workers`` > 0 reads items in that many
    DataLoader worker processes (decoding overlaps the model). ``label``: a progress line at
    every tenth of the items (a bar on a terminal), written to ``stream`` (default: the log; a
    data-parallel rank other than 0 passes a null stream, so the run logs each pass once)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(dataset))) if indices is None else list(indices)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    progress = Progress(len(order), label=label, every=None, unit=unit, stream=stream) if label else None
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_as_list,
            shuffle=False,
        )
        item_batches = iter(loader)
    else:
        item_batches = ([dataset[i] for i in chunk] for chunk in chunks)
    done = 0
    for chunk, items in zip(chunks, item_batches, strict=True):
        yield chunk, items
        done += len(chunk)
        if progress is not None:
            progress.update(done)
    if progress is not None:
        progress.close()
