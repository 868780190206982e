"""Per-layer CPU profile of EfficientAD-S inference, ours beside OpenVINO's own (issue #29 item 1).

For every convolution of the float32 CPU path (:mod:`efficientad_ext.inference.cpu_winograd`),
in the order ``infer`` runs them, on that layer's real input:

* ``ours``: the layer as the plan runs it (Winograd or direct);
* ``direct``: the same convolution as a oneDNN direct convolution (``ops.conv2d_relu_pool``);
* ``gemm``: for Winograd layers, the ``bmm`` part alone (the same chunked shapes the op uses),
  so ``ours - gemm`` is the input and output transforms;
* the layer's GFLOP (direct-convolution count) and what ``ours`` reaches in GFLOP/s.

Then ``torch.profiler`` over whole ``infer`` calls (self CPU time per op: convolutions, copies,
the maps kernel, resize), and OpenVINO's own per-node profile (``PERF_COUNT``) of the exported
model, the same weights: its convolutions in execution order with their kernel (``exec_type``)
and time, and its time per node type. Times are minima over ``--repeats`` calls (layers) or
medians (whole calls); threads as given, same for both.

    python benchmarks/cpu_layer_profile.py --threads 1 --batch 1 --out profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

from efficientad_ext import EfficientAD, export, ops
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.inference.cpu_winograd import plan_for
from efficientad_ext.inference.networks import networks_for
from efficientad_ext.training.precision import describe_cpu

# The same model as the interleaved latency run (run as a script, this folder is on sys.path).
from export_latency import seeded_model


def _min_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _gemm_time(layer, x: Tensor, repeats: int) -> float:
    """The op's bmm calls alone: V [a*a, n, C] @ U [a*a, C, K] per chunk of n tiles, with the
    chunk size winograd_conv2d_cpu.cpp picks (V and M about max(8 MB, size of U), at least 32
    tiles; keep the two formulas equal)."""
    w = layer.wino
    a, m = w.output_tf.shape[1], w.output_tf.shape[0]
    r = w.kernel_size
    b, c, h, wd = x.shape
    k = w.weight_tf.shape[2]
    oh, ow = h + 2 * layer.padding - r + 1, wd + 2 * layer.padding - r + 1
    total = b * -(-oh // m) * -(-ow // m)
    budget = max(8 << 20, a * a * c * k * x.element_size())
    chunk = max(32, min(budget // (a * a * (c + k) * x.element_size()), total))
    v = torch.rand(a * a, chunk, c)
    out = torch.empty(a * a, chunk, k)
    sizes = [min(chunk, total - s) for s in range(0, total, chunk)]

    def run() -> None:
        for n in sizes:
            torch.bmm(v[:, :n], w.weight_tf, out=out[:, :n])

    return _min_time(run, repeats)


def _layer_rows(model: EfficientAD, x: Tensor, repeats: int) -> list[dict]:
    nets = networks_for(model, torch.float32)
    plan = plan_for(nets)
    xin = model.normalize(x).contiguous(memory_format=torch.channels_last)
    rows = []

    def record(name: str, layer, inp: Tensor) -> Tensor:
        out = layer(inp)
        if layer.wino is not None:
            weight, bias = layer.wino.weight, layer.wino.bias
        else:
            weight, bias = layer.weight, layer.bias
        w_cl = weight.contiguous(memory_format=torch.channels_last)
        k, c, r, _ = weight.shape
        conv_hw = (inp.shape[2] + 2 * layer.padding - r + 1) * (inp.shape[3] + 2 * layer.padding - r + 1)
        gflop = 2 * inp.shape[0] * conv_hw * k * c * r * r / 1e9
        ours = _min_time(lambda: layer(inp), repeats)
        direct = _min_time(
            lambda: ops.conv2d_relu_pool(inp, w_cl, bias, layer.padding, layer.relu, layer.pool, layer.pool_padding),
            repeats,
        )
        row = {
            "layer": name,
            "in": list(inp.shape[1:]),
            "out": list(out.shape[1:]),
            "kernel": r,
            "path": "winograd" if layer.wino is not None else "direct",
            "gflop": gflop,
            "ours_ms": 1e3 * ours,
            "direct_ms": 1e3 * direct,
            "gemm_ms": 1e3 * _gemm_time(layer, inp, repeats) if layer.wino is not None else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        return out

    if plan.shared_first:
        both = record("teacher+student conv1", plan.first, xin)
        t, s = both[:, : plan.split], both[:, plan.split :]
    else:
        t = s = xin
    for i, layer in enumerate(plan.teacher):
        t = record(f"teacher conv{i + 2 if plan.shared_first else i + 1}", layer, t)
    for i, layer in enumerate(plan.student):
        s = record(f"student conv{i + 2 if plan.shared_first else i + 1}", layer, s)
    return rows


def _torch_profile(model: EfficientAD, x: Tensor, calls: int) -> list[dict]:
    model.infer(x, dtype=torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model.infer(x, dtype=torch.float32)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "calls": e.count // calls, "self_ms_per_call": e.self_cpu_time_total / 1e3 / calls}
        for e in events[:20]
    ]


def _openvino_profile(model: EfficientAD, x: Tensor, threads: int, repeats: int, precision: str) -> dict:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        export(model, Path(tmp) / "m", format="openvino")
        compiled = ov.Core().compile_model(
            str(Path(tmp) / "m.xml"),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True},
        )
    request = compiled.create_infer_request()
    inp = x.numpy()
    request.infer(inp)
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer(inp)
        walls.append(time.perf_counter() - t0)
    infos = [p for p in request.profiling_info if p.status == ov.ProfilingInfo.Status.EXECUTED]
    by_type: dict[str, float] = defaultdict(float)
    convs = []
    for p in infos:
        ms = p.real_time.total_seconds() * 1e3
        by_type[p.node_type] += ms
        if p.node_type == "Convolution":
            convs.append({"node": p.node_name, "exec_type": p.exec_type, "ms": ms})
    return {
        "precision_hint": precision,
        "wall_ms_median": 1e3 * statistics.median(walls),
        "by_node_type_ms": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        "convolutions": convs,
        "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = seeded_model()
    x = torch.rand(args.batch, 3, 256, 256, generator=torch.Generator().manual_seed(args.batch))
    with torch.no_grad():
        layers = _layer_rows(model, x, args.repeats)
    walls = []
    model.infer(x, dtype=torch.float32)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.infer(x, dtype=torch.float32)
        walls.append(time.perf_counter() - t0)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
        "threads": args.threads,
        "batch": args.batch,
        "torch": torch.__version__,
        "layers": layers,
        "ours_infer_ms_median": 1e3 * statistics.median(walls),
        "torch_profile": _torch_profile(model, x, 3),
    }
    if not args.no_openvino:
        import openvino as ov

        result["openvino"] = ov.__version__
        result["openvino_f32"] = _openvino_profile(model, x, args.threads, args.repeats, "f32")
    write_text_atomically(args.out, json.dumps(result, indent=2))
    _print_summary(result)
    return 0


def _print_summary(result: dict) -> None:
    print(f"\n{result['machine']}, {result['threads']} thread(s), batch {result['batch']}")
    print("| layer | in -> out | path | GFLOP | ours ms | GFLOP/s | direct ms | gemm ms | transforms ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in result["layers"]:
        g = r["gemm_ms"]
        tr = "" if g is None else f"{r['ours_ms'] - g:.1f}"
        print(
            f"| {r['layer']} | {r['in']} -> {r['out']} | {r['path']} | {r['gflop']:.2f} | {r['ours_ms']:.1f} "
            f"| {r['gflop'] / r['ours_ms'] * 1e3:.0f} | {r['direct_ms']:.1f} | {'' if g is None else f'{g:.1f}'} | {tr} |"
        )
    print(f"ours infer median: {result['ours_infer_ms_median']:.1f} ms")
    for e in result["torch_profile"][:12]:
        print(f"  {e['op']:<40} x{e['calls']:<4} {e['self_ms_per_call']:.2f} ms")
    if "openvino_f32" in result:
        ov = result["openvino_f32"]
        print(f"OpenVINO f32 ({ov['inference_precision']}) median: {ov['wall_ms_median']:.1f} ms")
        for k, v in list(ov["by_node_type_ms"].items())[:8]:
            print(f"  {k:<24} {v:.2f} ms")
        for c in ov["convolutions"]:
            print(f"  conv {c['exec_type']:<28} {c['ms']:.2f} ms  {c['node']}")


if __name__ == "__main__":
    sys.exit(main())
