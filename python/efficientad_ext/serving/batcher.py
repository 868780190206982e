"""Dynamic batching: images of concurrent requests scored as one batch, answered one by one.

One collector task takes requests from a queue in arrival order and closes a batch when it
holds ``max_batch`` images, when ``max_wait_ms`` has passed since its first request, or at
once when no other request is still being received (so one client never waits and gets batch-1
latency). The batch runs on one worker thread (torch uses its own threads inside); requests
arriving meanwhile queue up and form the next batch, so batches grow with the load by
themselves. Invariants:

- a request's images are never split across batches unless it alone holds more than
  ``max_batch`` (then it runs alone, in chunks of ``max_batch``);
- every submitted request is answered exactly once: with its own results, in its own order,
  or with the exception its batch raised;
- a failed batch of several requests is retried request by request, so one request that makes
  inference fail (e.g. out of memory) fails alone;
- :meth:`DynamicBatcher.stop` answers every request already submitted before it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from torch import Tensor

# (images, each [3, H, W] of any size) -> (scores [B], each image's map [H, W] or None), on the
# CPU in float32; one network call for all of them (EfficientAD.infer_each).
ScoreFn = Callable[[list[Tensor], bool], tuple[Tensor, list[Tensor] | None]]


@dataclass
class ImageScore:
    """One image's answer: its ``score`` (NaN for a broken one), its map [H, W] when asked
    for, and ``batch_size``: the images in the network call that scored it."""

    score: float
    anomaly_map: Tensor | None
    batch_size: int


@dataclass
class _Request:
    images: list[Tensor]
    want_maps: bool
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


# Put on the queue by stop(): the collector ends once every request before it is answered. An
# object of its own, not None, because the collector also carries "no request" over as None.
_STOP = object()


class BatcherClosed(RuntimeError):
    """Raised by :meth:`DynamicBatcher.submit` once the batcher is stopping."""


class DynamicBatcher:
    """Groups :meth:`submit` calls into batches for ``score_fn``; see the module docstring.

    ``receiving``: how many requests are being received right now (not yet submitted); the
    collector waits for companions only while it is above 0. ``on_batch(size, seconds)`` is
    called after every batch (for metrics)."""

    def __init__(
        self,
        score_fn: ScoreFn,
        max_batch: int,
        max_wait_ms: float,
        receiving: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._score_fn = score_fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._receiving = receiving
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Request | object] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="efficientad-infer")
        self._task: asyncio.Task | None = None
        self._closing = False
        self._carry: _Request | object | None = None  # first of the next batch, or _STOP

    def start(self) -> None:
        """Starts the collector on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="efficientad-batcher")

    async def submit(self, images: Sequence[Tensor], want_maps: bool = False) -> list[ImageScore]:
        """Scores ``images`` (each float [3, H, W] in [0, 1], any sizes); their answers in order."""
        if self._closing or self._task is None:
            raise BatcherClosed("the service is shutting down")
        if not images:
            raise ValueError("submit needs at least one image")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(list(images), want_maps, future))
        return await future

    async def stop(self) -> None:
        """Refuses new requests, answers every queued one, then stops the worker thread."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[_Request] | None:
        """The next batch in arrival order; None once stopped and drained."""
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        batch, count = [first], len(first.images)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while count < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if self._receiving() <= 0 or left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), timeout=min(left, 0.001))
                except TimeoutError:
                    continue  # look again: a request still being received may have arrived or ended
            if nxt is _STOP or count + len(nxt.images) > self._max_batch:
                self._carry = nxt  # the stop mark, or a request that does not fit: first of the next batch
                break
            batch.append(nxt)
            count += len(nxt.images)
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            outcomes = await loop.run_in_executor(self._executor, self._run, batch)
            self._on_batch(sum(len(r.images) for r in batch), time.perf_counter() - started)
            for request, outcome in zip(batch, outcomes):
                if request.future.done():  # the client went away; nobody waits for it
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    def _run(self, batch: list[_Request]) -> list[list[ImageScore] | BaseException]:
        """On the worker thread: the batch's answers, a failed batch retried request by request."""
        try:
            return self._score(batch)
        except Exception as e:
            if len(batch) == 1:
                return [e]
        outcomes: list[list[ImageScore] | BaseException] = []
        for request in batch:
            try:
                outcomes.extend(self._score([request]))
            except Exception as e:
                outcomes.append(e)
        return outcomes

    def _score(self, batch: list[_Request]) -> list[list[ImageScore]]:
        images = [(i, j, im) for i, r in enumerate(batch) for j, im in enumerate(r.images)]
        want_maps = any(r.want_maps for r in batch)
        answers: list[list[ImageScore | None]] = [[None] * len(r.images) for r in batch]
        # Images of any sizes share a network call (each resized to the model's size, its map
        # made at its own size); only a request holding more than max_batch images is chunked.
        for start in range(0, len(images), self._max_batch):
            chunk = images[start : start + self._max_batch]
            scores, maps = self._score_fn([im for _, _, im in chunk], want_maps)
            for k, (i, j, _) in enumerate(chunk):
                keep = maps is not None and batch[i].want_maps
                answers[i][j] = ImageScore(float(scores[k]), maps[k] if keep else None, len(chunk))
        return answers  # type: ignore[return-value]
