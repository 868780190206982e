"""Winograd tile sets per layer: each PDN-S Winograd layer of the CPU inference plan on its real
input, with the 8x8 ("large") and 6x6 ("small") input tiles (``inference.winograd.TILES``):
rounding error against the float64 direct convolution, and time, the two sets alternating
within each round (minimum over rounds), the same process and threads.

    python benchmarks/winograd_tiles.py --threads 2 --batch 1 --rounds 5 --out tiles.json

Error: max |y - y_ref| / max |y_ref| and the RMS error over the RMS of ``y_ref``, ``y_ref`` the
layer (convolution, bias, ReLU, pooling) in float64 on the same float32 input. Each layer's
input is the previous layer's large-tile output, as in ``infer``. Weights: the seeded model of
``export_latency.py`` (speed does not depend on the values; the error is relative).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from efficientad_ext import ops
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.inference.cpu_winograd import plan_for
from efficientad_ext.inference.networks import networks_for
from efficientad_ext.inference.winograd import TILES, prepare_weights
from efficientad_ext.training.precision import describe_cpu

# The same model as the interleaved latency run (run as a script, this folder is on sys.path).
from export_latency import seeded_model


def _errors(y: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = y.double() - ref
    return {
        "max_of_max": (diff.abs().max() / ref.abs().max()).item(),
        "rms_of_rms": (diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item(),
    }


def _reference(layer, x: torch.Tensor) -> torch.Tensor:
    w = layer.wino
    bias = None if w.bias is None else w.bias.double()
    y = F.conv2d(x.double(), w.weight.double(), bias, padding=layer.padding)
    y = y.relu() if layer.relu else y
    return F.avg_pool2d(y, 2, 2, layer.pool_padding) if layer.pool else y


@torch.no_grad()
def measure(batch: int, rounds: int) -> list[dict]:
    model = seeded_model()
    plan = plan_for(networks_for(model, torch.float32), "large")
    x = model.normalize(torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch)))
    both = plan.first(x.contiguous(memory_format=torch.channels_last))
    rows = []
    for name, layers, h in (
        ("teacher", plan.teacher, both[:, : plan.split]),
        ("student", plan.student, both[:, plan.split :]),
    ):
        for index, layer in enumerate(layers, start=2):
            w = layer.wino
            prepared = {s: prepare_weights(w.weight, w.bias, tile=TILES[s][w.kernel_size]) for s in TILES}
            args = (layer.padding, layer.relu, layer.pool, layer.pool_padding)
            run = {s: (lambda p=p, h=h, a=args: ops.winograd_conv2d(h, p, *a)) for s, p in prepared.items()}
            ref = _reference(layer, h)
            row = {"layer": f"{name} conv{index}", "in": list(h.shape[1:]), "kernel": w.kernel_size}
            outputs = {s: f() for s, f in run.items()}  # also the warm-up
            times = {s: [] for s in run}
            for _ in range(rounds):
                for s, f in run.items():
                    t0 = time.perf_counter()
                    f()
                    times[s].append(time.perf_counter() - t0)
            for s in run:
                row[s] = {"tile": TILES[s][w.kernel_size], "ms": 1e3 * min(times[s]), **_errors(outputs[s], ref)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            h = outputs["large"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.batch, args.rounds)
    total = {s: sum(r[s]["ms"] for r in rows) for s in TILES}
    print(f"sum of layer minima, ms: {total}; small / large: {total['small'] / total['large']:.3f}")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "layers": rows,
        "sum_ms": total,
    }
    write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
