"""CUDA-graph replay of ``EfficientAD.infer`` for repeated calls with one batch shape.

At batch 1 the PDNs are a few dozen kernel launches, each costing microseconds of host time
(Python, dispatcher, launch); the GPU work itself is of the same order. A CUDA graph records
the whole of ``infer`` (input conversion, normalisation, the three networks, the maps) once
and replays it with one launch.

Invariants:

* One graph per key ``(shape, dtype and device of the batch, compute dtype, generation of the
  cached inference networks, inference options)``; at most :data:`MAX_GRAPHS` are kept (least recently used
  dropped first), each with its own static input buffer and memory pool.
* The graph reads the batch from its static input buffer: every call copies the batch into it
  (a device-to-device copy, stream-ordered) and replays; the outputs are cloned out of the
  graph's static outputs so that a later replay never overwrites a result already returned.
* Nothing here synchronises the host with the device: keys and the weight-cache check are
  host metadata only; copy, replay and clone are enqueued on the current stream.
* The first call of a key warms ``infer`` up on a side stream (cuDNN picks its algorithms
  and workspaces there, outside the capture), then captures; it costs a few eager runs.
* The weights the graph reads are the cached inference copies (:mod:`.networks`): refreshed in place when the model's parameters
  change in place; a new generation (new storage) makes old graphs unreachable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from efficientad_ext.inference.result import InferenceResult

if TYPE_CHECKING:
    from efficientad_ext.inference.options import InferenceOptions
    from efficientad_ext.models.efficientad import EfficientAD

MAX_GRAPHS = 8
WARMUP_RUNS = 2

GraphKey = tuple[tuple[int, ...], torch.dtype, torch.device, torch.dtype, int, "InferenceOptions"]


@dataclass
class CapturedInfer:
    """One captured ``infer`` call: its graph, static input and static outputs."""

    graph: torch.cuda.CUDAGraph
    static_input: Tensor
    static_map: Tensor
    static_score: Tensor


def usable(model: EfficientAD, batch: object) -> bool:
    """Whether ``batch`` can go through a CUDA graph: a tensor already on the model's CUDA
    device (lists of images, CPU tensors and CPU models run eagerly)."""
    return (
        isinstance(batch, Tensor)
        and batch.is_cuda
        and model.device.type == "cuda"
        and batch.device == model.device
        and not torch.cuda.is_current_stream_capturing()
    )


def _capture(run: Callable[[Tensor], InferenceResult], batch: Tensor) -> CapturedInfer:
    static_input = torch.empty_like(batch, memory_format=torch.contiguous_format)
    static_input.copy_(batch)
    side = torch.cuda.Stream(device=batch.device)
    side.wait_stream(torch.cuda.current_stream(batch.device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            run(static_input)
    torch.cuda.current_stream(batch.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static_input)
    return CapturedInfer(graph, static_input, out.anomaly_map, out.score)


def run_graphed(
    graphs: OrderedDict[GraphKey, CapturedInfer],
    batch: Tensor,
    compute_dtype: torch.dtype,
    generation: int,
    options: InferenceOptions,
    run: Callable[[Tensor], InferenceResult],
) -> InferenceResult:
    """``run(batch)`` through the graph of this key in ``graphs`` (captured on first use).

    ``run`` is the eager ``infer`` body for this compute dtype and these options;
    ``generation`` identifies the weight copies it reads (a new one invalidates older graphs)."""
    key: GraphKey = (tuple(batch.shape), batch.dtype, batch.device, compute_dtype, generation, options)
    captured = graphs.get(key)
    if captured is None:
        # Graphs of this compute dtype that read an older generation of the weight copies
        # are unreachable now (other dtypes have their own copies and generations).
        for stale in [k for k in graphs if k[3] == compute_dtype and k[4] != generation]:
            del graphs[stale]
        captured = _capture(run, batch)
        graphs[key] = captured
        while len(graphs) > MAX_GRAPHS:
            graphs.popitem(last=False)
    else:
        graphs.move_to_end(key)
        captured.static_input.copy_(batch)
    captured.graph.replay()
    return InferenceResult(captured.static_map.clone(), captured.static_score.clone())
