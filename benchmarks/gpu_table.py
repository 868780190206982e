"""One table of EfficientAD-S/-M inference and training speed on one GPU, in one run.

Run by ``benchmarks/device_check.sh`` on the GPU machine; ``--dry-run`` runs every code path
on the CPU with tiny sizes (a few seconds per row) so the script itself is tested without a GPU.

Rows (each architecture, 256x256 images, random weights; image tensor on the device in, map
and score out):
  ours       ``EfficientAD.infer`` in float32 (TF32 convolutions) and bfloat16, each with and
             without CUDA-graph replay
  ours-1conv / ours-2conv  ``infer`` at batch 1 with the teacher+student first-layer choice
             (``InferenceOptions.fuse_first_layer``) flipped: the measurement behind its default
  ref        ``EfficientAD.reference_infer`` (plain torch.nn + reference ops), eager float32 and
             eager float16 autocast (cuDNN)
  ours-cudnnfuse  ``infer`` bf16 with ``InferenceOptions(cudnn_fusion=True)`` (cuDNN's fused conv + bias + ReLU
             for the un-pooled PDN layers and the autoencoder; default off until this row shows a gain)
  ours-aestream   ``infer`` bf16, batch 1, with ``autoencoder_side_stream=True`` (the autoencoder on a
             second stream inside the CUDA graph; default off likewise)
  compiled   ``torch.compile(reference_infer, mode="max-autotune")``: EfficientAD-S, float16
             autocast, batch 1 only (its autotuning takes minutes; run last, or alone with
             ``--jobs compiled`` in a second call on the warm machine)
  profile    not a row: per-kernel CUDA time of ``infer`` bf16 (eager) at batch 1 and 64
             (``torch.profiler`` key_averages, by device time), in the JSON's ``profiles``
  train      one training step (Algorithm 1, with a penalty batch) at batch 1 and 8: ours
             (fused hard-feature loss) vs the same step with the reference loss
             (``torch.quantile`` + mask)
Batch-1 rows report end-to-end latency (wall clock of call + synchronise, median and p90 of
many calls, the device idle at each start); batch-64 rows report throughput (back-to-back
calls, one synchronisation). ``% floor`` is the arithmetic floor (FLOPs counted by
``torch.utils.flop_counter`` / 790 TFLOP/s, the H200's measured bf16 rate) over the measured
time per image. Jobs run in priority order; a job is skipped when its estimated time no
longer fits ``--budget-s``; the table is rewritten after every row, so a run killed from
outside still leaves every finished row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

import efficientad_ext
from efficientad_ext import EfficientAD, ModelConfig, reference
from efficientad_ext.inference import clear as clear_inference_cache
from efficientad_ext.training import TrainConfig, TrainStep
from efficientad_ext.training import trainer as train_module

BF16_PEAK_FLOPS = 790e12  # measured dense bf16 rate of the H200 (issue 5)
IMAGE = 256
COMPILE_ESTIMATE_S = 240  # one torch.compile(mode="max-autotune") row, cold cache, on the GPU machine
PROFILE_TOP = 40  # kernels kept per profile


@dataclass
class Settings:
    device: torch.device
    dry_run: bool
    archs: list[str]
    teacher_channels: int
    small_batch: int
    large_batch: int
    train_batches: tuple[int, int]
    latency_iters: int
    throughput_iters: int
    train_iters: int
    compile_jobs: list[str]  # "fp16" and/or "fp32"
    budget_s: float
    out: Path | None


@dataclass
class Row:
    arch: str
    kind: str  # "infer" or "train"
    impl: str
    precision: str
    batch: int
    graph: str  # "yes" / "no" / "-"
    ms_per_call: float
    p90_ms: float | None = None
    images_per_s: float = 0.0
    extra: dict = field(default_factory=dict)


class Table:
    """The rows so far, rewritten to ``out`` (markdown + JSON) after every row."""

    def __init__(self, settings: Settings, flops: dict[str, float]) -> None:
        self.settings, self.flops = settings, flops
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.profiles: dict[str, list[dict]] = {}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.arch:6s} {row.kind:5s} {row.impl:9s} {row.precision:5s} B={row.batch:<3d} graph={row.graph:3s} "
            f"{row.ms_per_call:9.3f} ms/call {row.images_per_s:10.1f} img/s",
            flush=True,
        )
        self.write()

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")
        print(f"  skipped {what}: {why}", flush=True)
        self.write()

    def profile(self, key: str, kernels: list[dict]) -> None:
        self.profiles[key] = kernels
        top = ", ".join(f"{k['name'][:40]} {k['pct']:.1f}%" for k in kernels[:3])
        print(f"  profile {key}: {len(kernels)} kernels; top: {top}", flush=True)
        self.write()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)
        self.write()

    def _baseline(self, row: Row) -> Row | None:
        """Inference rows: the eager fp16 reference of the same arch and batch; training rows:
        the reference training step of the same arch and batch."""
        precision = "fp16" if row.kind == "infer" else "fp32"
        for r in self.rows:
            if (r.arch, r.kind, r.batch, r.impl, r.precision) == (row.arch, row.kind, row.batch, "ref", precision):
                return r
        return None

    def markdown(self) -> str:
        s = self.settings
        lines = [
            f"EfficientAD {IMAGE}x{IMAGE}, device {device_name(s.device)}, torch {torch.__version__}, "
            f"teacher channels {s.teacher_channels}{' (DRY RUN: tiny sizes, numbers mean nothing)' if s.dry_run else ''}",
            "",
            "| arch | kind | impl | precision | batch | CUDA graph | ms/call (median) | p90 ms | img/s | x ref | % bf16 floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            base = self._baseline(r)
            speedup = f"{base.ms_per_call / r.ms_per_call:.2f}" if base is not None and base is not r else "-"
            floor = "-"
            if r.kind == "infer" and r.arch in self.flops and r.images_per_s > 0:
                floor_s_per_image = self.flops[r.arch] / BF16_PEAK_FLOPS
                floor = f"{100.0 * floor_s_per_image * r.images_per_s:.1f}"
            p90 = f"{r.p90_ms:.3f}" if r.p90_ms is not None else "-"
            lines.append(
                f"| {r.arch} | {r.kind} | {r.impl} | {r.precision} | {r.batch} | {r.graph} | {r.ms_per_call:.3f} | "
                f"{p90} | {r.images_per_s:.1f} | {speedup} | {floor} |"
            )
        lines += [
            "",
            "x ref: inference rows vs the eager fp16 reference of the same arch and batch; training rows vs the "
            "reference training step (fp32). % bf16 floor: FLOPs per image / 790 TFLOP/s over the measured time per image.",
        ]
        lines += [f"FLOPs per image ({a}): {f / 1e9:.1f} GFLOP" for a, f in self.flops.items()]
        lines += [f"- {n}" for n in self.notes]
        lines += [f"- skipped {k}" for k in self.skipped]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.settings.out is None:
            return
        self.settings.out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("gpu_table.md", self.markdown()),
            (
                "gpu_table.json",
                json.dumps(
                    {
                        "rows": [asdict(r) for r in self.rows],
                        "notes": self.notes,
                        "skipped": self.skipped,
                        "flops": self.flops,
                        "profiles": self.profiles,
                        "build_info": efficientad_ext.build_info(),
                    },
                    indent=1,
                ),
            ),
        ):
            tmp = self.settings.out / (name + ".tmp")
            try:
                tmp.write_text(text)
                os.replace(tmp, self.settings.out / name)  # atomic: a kill never leaves half a table
            finally:
                tmp.unlink(missing_ok=True)  # never a ninth file in $OUT (device_check.sh cleans too)


# ----------------------------------------------------------------------------- helpers


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(arch: str, channels: int) -> float:
    """Forward FLOPs of teacher + student + autoencoder for one image (meta tensors: no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = EfficientAD(ModelConfig(arch=arch, teacher_channels=channels)).to("meta").eval()
    x = torch.empty(1, 3, IMAGE, IMAGE, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.teacher(x)
        model.student(x)
        model.autoencoder(x, model.feature_size)
    return float(counter.get_total_flops())


def random_model(arch: str, channels: int, device: torch.device) -> EfficientAD:
    torch.manual_seed(0)
    model = EfficientAD(ModelConfig(arch=arch, teacher_channels=channels)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    return model.to(device)


def latency_ms(fn: Callable[[], object], device: torch.device, iters: int) -> tuple[float, float]:
    """Median and p90 wall-clock ms of ``fn()`` + synchronise, starting each call on an idle device."""
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]


def throughput_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Mean ms per call of ``iters`` back-to-back calls (one synchronisation at the end)."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def kernel_breakdown(fn: Callable[[], object], device: torch.device, iters: int) -> list[dict]:
    """The kernels of ``iters`` calls of ``fn`` by total device time (torch.profiler
    key_averages; CPU op time on a CPU dry run), the top PROFILE_TOP, per call."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
        sync(device)

    def device_us(evt) -> float:
        if not cuda:
            return float(evt.self_cpu_time_total)
        for attr in ("self_device_time_total", "self_cuda_time_total"):  # newer / older torch
            if hasattr(evt, attr):
                return float(getattr(evt, attr))
        return 0.0

    events = [e for e in prof.key_averages() if device_us(e) > 0]
    total = sum(device_us(e) for e in events) or 1.0
    events.sort(key=device_us, reverse=True)
    return [
        {
            "name": e.key,
            "calls_per_infer": e.count / iters,
            "us_per_infer": round(device_us(e) / iters, 2),
            "pct": round(100.0 * device_us(e) / total, 2),
        }
        for e in events[:PROFILE_TOP]
    ]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


@contextlib.contextmanager
def reference_hard_loss() -> Iterator[None]:
    """Runs ``TrainStep`` with the plain-PyTorch hard-feature loss (torch.quantile + mask):
    the training step exactly as ours except for that one op (TrainStep calls it through the
    ``ops`` module attribute of efficientad_ext.training.trainer)."""
    original = train_module.ops
    train_module.ops = types.SimpleNamespace(hard_feature_loss=reference.hard_feature_loss)
    try:
        yield
    finally:
        train_module.ops = original


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# ----------------------------------------------------------------------------- jobs


def infer_jobs(s: Settings, arch: str, table: Table) -> list[tuple[str, float, Callable[[], None]]]:
    """(name, estimated seconds, run) for every inference row of ``arch``."""
    dev = s.device
    model = random_model(arch, s.teacher_channels, dev)
    inputs = {
        b: torch.rand(b, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(b)).to(dev)
        for b in (s.small_batch, s.large_batch)
    }
    want = {}

    def ref_fp16(x):
        with torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16):
            return model.reference_infer(x)

    def check_accuracy() -> None:
        x = inputs[s.small_batch]
        want["fp32"] = model.reference_infer(x)
        for dtype in (torch.float32, torch.bfloat16) if not s.dry_run else (torch.float32,):
            got = model.infer(x, dtype=dtype, cuda_graph=False)
            graphed = model.infer(x, dtype=dtype)
            table.note(
                f"{arch} accuracy of ours {str(dtype)[6:]} vs reference fp32 (B={s.small_batch}, random weights): map rel. L2 "
                f"{relative_error(got.anomaly_map, want['fp32'].anomaly_map):.2e}, max |map diff| "
                f"{float((got.anomaly_map - want['fp32'].anomaly_map).abs().max()):.2e}, score rel. "
                f"{relative_error(got.score, want['fp32'].score):.2e}; graph vs eager max |diff| "
                f"{float((graphed.anomaly_map - got.anomaly_map).abs().max()):.2e}"
            )

    def ours(dtype: torch.dtype, graph: bool, batch: int) -> Callable[[], None]:
        def run() -> None:
            x = inputs[batch]
            fn = lambda: model.infer(x, dtype=dtype, cuda_graph=graph)  # noqa: E731
            measure(
                fn,
                "ours",
                "bf16" if dtype == torch.bfloat16 else "fp32",
                batch,
                "yes" if graph and dev.type == "cuda" else "no",
            )

        return run

    def ours_other_first_layer(dtype: torch.dtype, batch: int) -> Callable[[], None]:
        """ours with the first-layer choice of InferenceOptions.fuse_first_layer flipped for this
        device (one conv for teacher+student vs two): the measurement behind that default."""

        def run() -> None:
            options = model.inference_options
            default = options.fuses_first_layer(dev.type)
            model.inference_options = replace(options, fuse_first_layer=options.fuse_first_layer ^ {dev.type})
            try:
                x = inputs[batch]
                label = "ours-1conv" if not default else "ours-2conv"
                measure(
                    lambda: model.infer(x, dtype=dtype),
                    label,
                    "bf16" if dtype == torch.bfloat16 else "fp32",
                    batch,
                    "yes" if dev.type == "cuda" else "no",
                    first_layer="one conv" if not default else "two convs",
                )
            finally:
                model.inference_options = options
                clear_inference_cache(model)  # the other path's graphs are not needed again

        return run

    def ref(low: bool, batch: int) -> Callable[[], None]:
        def run() -> None:
            x = inputs[batch]
            fn = (lambda: ref_fp16(x)) if low else (lambda: model.reference_infer(x))
            measure(fn, "ref", "fp16" if low else "fp32", batch, "no")

        return run

    def ours_switched(option: str, label: str, dtype: torch.dtype, batch: int) -> Callable[[], None]:
        """ours with the :class:`InferenceOptions` switch ``option`` on (the options key the CUDA
        graphs, so the switched path is captured anew; the default options are restored)."""

        def run() -> None:
            default = model.inference_options
            model.inference_options = replace(default, **{option: True})
            try:
                x = inputs[batch]
                measure(
                    lambda: model.infer(x, dtype=dtype),
                    label,
                    "bf16" if dtype == torch.bfloat16 else "fp32",
                    batch,
                    "yes" if dev.type == "cuda" else "no",
                    switch=f"{option}=True",
                )
            finally:
                model.inference_options = default

        return run

    def profile(dtype: torch.dtype, batch: int) -> Callable[[], None]:
        """Per-kernel device time of eager ``infer`` (no graph: the profiler sees each kernel)."""

        def run() -> None:
            x = inputs[batch]
            fn = lambda: model.infer(x, dtype=dtype, cuda_graph=False)  # noqa: E731
            for _ in range(2 if dev.type == "cuda" else 0 if s.dry_run else 1):
                fn()
            sync(dev)
            table.profile(
                f"{arch} {'bf16' if dtype == torch.bfloat16 else 'fp32'} B={batch}",
                kernel_breakdown(fn, dev, 1 if s.dry_run else 5),
            )

        return run

    def compiled(precision: str, batch: int) -> Callable[[], None]:
        def run() -> None:
            torch._dynamo.reset()
            base = ref_fp16 if precision == "fp16" else model.reference_infer
            t0 = time.perf_counter()
            fn_c = torch.compile(base, mode="max-autotune", dynamic=False)
            x = inputs[batch]
            fn_c(x)
            fn_c(x)
            sync(dev)
            compile_s = time.perf_counter() - t0
            measure(lambda: fn_c(x), "compiled", precision, batch, "auto", compile_s=round(compile_s, 1))

        return run

    def measure(fn: Callable[[], object], impl: str, precision: str, batch: int, graph: str, **extra) -> None:
        for _ in range(3 if dev.type == "cuda" else 0 if s.dry_run else 1):  # warm-up (graphs, cuDNN algorithms)
            fn()
        sync(dev)
        if batch == s.small_batch:
            med, p90 = latency_ms(fn, dev, s.latency_iters)
            table.add(Row(arch, "infer", impl, precision, batch, graph, med, p90, 1e3 * batch / med, extra))
        else:
            ms = throughput_ms(fn, dev, s.throughput_iters)
            table.add(Row(arch, "infer", impl, precision, batch, graph, ms, None, 1e3 * batch / ms, extra))

    b1, bn = s.small_batch, s.large_batch
    jobs: list[tuple[str, float, Callable[[], None]]] = [(f"{arch} accuracy", 5, check_accuracy)]

    def low_precision_fits(name: str, batch: int) -> bool:
        # Dry run on a CPU: bf16 convolutions without bf16 units take ~20-100 s per image, so
        # one row of ours in bf16 (first arch, batch 1) exercises that path; the autocast
        # reference (plain NCHW convolutions, slower still: > 10 min seen) is left out.
        if not s.dry_run or (arch == s.archs[0] and batch == b1 and "ref" not in name):
            return True
        table.skip(name, "dry run: low-precision rows only for ours, first arch, batch 1 (slow on CPUs)")
        return False

    for batch in (b1, bn):
        for dtype in (torch.bfloat16, torch.float32):
            if dtype == torch.bfloat16 and not low_precision_fits(f"{arch} ours bf16 B={batch}", batch):
                continue
            for graph in (True, False) if dev.type == "cuda" else (False,):  # no graphs on the CPU
                jobs.append((f"{arch} ours {dtype} graph={graph} B={batch}", 4, ours(dtype, graph, batch)))
        alt_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the CPU dry run: float32 (fast)
        if batch == b1:
            jobs.append(
                (f"{arch} ours {alt_dtype} first layer flipped B={batch}", 4, ours_other_first_layer(alt_dtype, batch))
            )
        if batch == b1 or not s.dry_run:
            jobs.append(
                (
                    f"{arch} ours {alt_dtype} cuDNN fusion B={batch}",
                    4,
                    ours_switched("cudnn_fusion", "ours-cudnnfuse", alt_dtype, batch),
                )
            )
            jobs.append((f"{arch} profile {alt_dtype} B={batch}", 6, profile(alt_dtype, batch)))
        if batch == b1:  # the autoencoder on a side stream (batch 1 only, by design)
            jobs.append(
                (
                    f"{arch} ours {alt_dtype} autoencoder side stream B={batch}",
                    4,
                    ours_switched("autoencoder_side_stream", "ours-aestream", alt_dtype, batch),
                )
            )
        if low_precision_fits(f"{arch} ref fp16 B={batch}", batch):
            jobs.append((f"{arch} ref fp16 B={batch}", 4, ref(True, batch)))
        jobs.append((f"{arch} ref fp32 B={batch}", 4, ref(False, batch)))
    # torch.compile max-autotune: S at batch 1 only (each precision autotunes every convolution
    # shape for minutes: ~240 s is a realistic budget on the H200 with a cold cache).
    compile_jobs = [
        (f"{arch} compiled {p} B={b1}", COMPILE_ESTIMATE_S if dev.type == "cuda" else 60, compiled(p, b1))
        for p in s.compile_jobs
        if arch == "small" or s.dry_run
    ]
    return jobs + compile_jobs


def train_jobs(s: Settings, arch: str, table: Table) -> list[tuple[str, float, Callable[[], None]]]:
    dev = s.device

    def run(batch: int, impl: str) -> None:
        model = random_model(arch, s.teacher_channels, dev).train()
        model.teacher.eval()
        step = TrainStep(model, TrainConfig(steps=70_000, batch_size=batch), torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(batch)
        images = torch.rand(batch, 3, IMAGE, IMAGE, generator=gen).to(dev)
        penalty = torch.rand(batch, 3, IMAGE, IMAGE, generator=gen).to(dev)
        ctx = reference_hard_loss() if impl == "ref" else contextlib.nullcontext()
        with ctx:
            for i in range(2 if dev.type == "cuda" else 0 if s.dry_run else 1):
                step(i, images, penalty)  # warm-up; the step synchronises (.item() of the losses)
            med, p90 = latency_ms(lambda: step(10, images, penalty), dev, s.train_iters)
        row = Row(arch, "train", impl, "fp32", batch, "no", med, p90, 1e3 * batch / med)
        if batch == 1:
            row.extra["70k_steps_min"] = round(70_000 * med / 1e3 / 60, 1)
        table.add(row)

    return [
        (f"{arch} train {impl} B={b}", 8, (lambda b=b, impl=impl: run(b, impl)))
        for b in s.train_batches
        for impl in ("ours", "ref")
    ]


def summary(table: Table) -> list[str]:
    """The issue's targets as ratios from this run (never asserted)."""

    def find(**kw) -> Row | None:
        for r in table.rows:
            if all(getattr(r, k) == v for k, v in kw.items()):
                return r
        return None

    out = []
    s = table.settings
    for arch in s.archs:
        b1 = find(arch=arch, kind="infer", impl="ours", precision="bf16", batch=s.small_batch, graph="yes") or find(
            arch=arch, kind="infer", impl="ours", precision="bf16", batch=s.small_batch
        )
        bn = find(arch=arch, kind="infer", impl="ours", precision="bf16", batch=s.large_batch, graph="yes") or find(
            arch=arch, kind="infer", impl="ours", precision="bf16", batch=s.large_batch
        )
        fp16 = find(arch=arch, kind="infer", impl="ref", precision="fp16", batch=s.small_batch)
        comp = [r for r in table.rows if r.arch == arch and r.impl == "compiled" and r.batch == s.small_batch]
        best_comp = min(comp, key=lambda r: r.ms_per_call) if comp else None
        tr = find(arch=arch, kind="train", impl="ours", batch=1)
        if b1:
            out.append(f"{arch}: batch-1 latency ours bf16 {b1.ms_per_call:.3f} ms (target S <= 0.35 ms)")
        if bn:
            out.append(f"{arch}: batch-{s.large_batch} bf16 throughput {bn.images_per_s:.0f} img/s (target S >= 6000)")
        if b1 and fp16:
            out.append(
                f"{arch}: batch 1 vs eager fp16 reference: {fp16.ms_per_call / b1.ms_per_call:.2f}x (target >= 2)"
            )
        if b1 and best_comp:
            out.append(
                f"{arch}: batch 1 vs best torch.compile max-autotune ({best_comp.precision}): "
                f"{best_comp.ms_per_call / b1.ms_per_call:.2f}x (target >= 1.3)"
            )
        if tr:
            out.append(
                f"{arch}: 70,000 training steps at batch 1 would take {tr.extra.get('70k_steps_min')} min (target S <= 15)"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no compile: tests this script")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    p.add_argument("--archs", default="small,medium")
    p.add_argument(
        "--budget-s", type=float, default=240.0, help="skip jobs that no longer fit (a started job runs to its end)"
    )
    p.add_argument(
        "--compile",
        default=None,
        help="torch.compile baselines to run (EfficientAD-S, batch 1): comma list "
        "of fp16,fp32 or 'none' (default: fp16 on CUDA, none with --dry-run)",
    )
    p.add_argument(
        "--jobs",
        choices=("all", "cheap", "compiled"),
        default="all",
        help="'compiled': only the torch.compile rows (a second call on a warm machine)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_table.md / gpu_table.json")
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args(argv)

    dry = args.dry_run
    device = torch.device(args.device or ("cpu" if dry else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_table: no CUDA device (use --dry-run to test the script on the CPU)", file=sys.stderr)
        return 2
    compile_arg = args.compile if args.compile is not None else ("none" if dry else "fp16")
    compile_jobs = [] if compile_arg == "none" else [c for c in compile_arg.split(",") if c]
    if any(c not in ("fp16", "fp32") for c in compile_jobs):
        p.error(f"--compile must be a comma list of fp16, fp32 or 'none', got {compile_arg!r}")
    s = Settings(
        device=device,
        dry_run=dry,
        archs=[a for a in args.archs.split(",") if a],
        teacher_channels=8 if dry else 384,
        small_batch=1,
        large_batch=2 if dry else 64,
        train_batches=(1, 2) if dry else (1, 8),
        latency_iters=1 if dry else 200,
        throughput_iters=1 if dry else 20,
        train_iters=1 if dry else 20,
        compile_jobs=compile_jobs,
        budget_s=args.budget_s,
        out=args.out,
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every impl (ours included) gets cuDNN's best algorithms
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" rows: TF32 tensor cores, as cuDNN's default
        torch.backends.cudnn.allow_tf32 = True
    budget = Budget(s.budget_s)
    table = Table(s, {a: flops_per_image(a, s.teacher_channels) for a in s.archs})
    print(
        f"gpu_table: device {device_name(device)}, budget {s.budget_s:.0f} s, build {efficientad_ext.build_info()}",
        flush=True,
    )

    # Priority: every cheap row of every arch first (ours, eager references, training), then
    # the torch.compile rows, which can take minutes each.
    cheap, expensive = [], []
    for arch in s.archs:
        jobs = infer_jobs(s, arch, table)
        cheap += [j for j in jobs if "compiled" not in j[0]]
        expensive += [j for j in jobs if "compiled" in j[0]]
        if not args.no_train and (not dry or arch == s.archs[0]):  # dry run: one arch's training (CPU time)
            cheap += train_jobs(s, arch, table)
    failures = 0
    # A `timeout` stops this with SIGTERM: exit through finally blocks (no .tmp left behind).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    selected = {"all": cheap + expensive, "cheap": cheap, "compiled": expensive}[args.jobs]
    for name, estimate, job in selected:
        if budget.left() < estimate:
            table.skip(name, f"not enough time left ({budget.left():.0f} s < ~{estimate:.0f} s)")
            continue
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - report the failure, keep the other rows
            failures += 1
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            table.skip(name, f"FAILED: {type(exc).__name__}: {first}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for line in summary(table):
        table.note(line)
    print()
    print(table.markdown())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
