"""CPU latency of the exported model (onnxruntime, OpenVINO) beside ours (``EfficientAD.infer``),
same model, same images, same thread count, interleaved, one process.

    python benchmarks/export_latency.py --threads 2 --batches 1 8 --repeats 7 --out export_latency.json

The model is EfficientAD-S 256x256 with seeded random weights and calibrated-looking quantiles
(latency does not depend on the weights' values). Reported per batch: the median seconds per
call of each runtime and ours / runtime (above 1: ours is faster). Beside ``ours`` (the default
options), the same weights run as ``ours_small_tiles`` (``cpu_winograd_tiles="small"``, the
Winograd tiles before session 17) and ``ours_direct`` (``cpu_winograd=False``: oneDNN direct
convolutions), in the same rounds; ``--no-variants`` leaves those two out.
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from efficientad_ext import EfficientAD, export
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.training.precision import describe_cpu


def seeded_model() -> EfficientAD:
    """EfficientAD-S 256x256, seeded random weights, fixed quantiles (latency does not depend on them)."""
    torch.manual_seed(0)
    model = EfficientAD().eval()
    model.quantiles.copy_(torch.tensor([0.1, 2.0, 0.05, 1.0]))
    model.calibrated = True
    return model


def _variants() -> dict[str, Callable[[torch.Tensor], object]]:
    """``infer`` of the same weights as :func:`seeded_model` under other inference options."""
    variants = {}
    for name, changes in (
        ("ours_small_tiles", {"cpu_winograd_tiles": "small"}),
        ("ours_direct", {"cpu_winograd": False}),
    ):
        variant = seeded_model()
        variant.inference_options = replace(variant.inference_options, **changes)
        variants[name] = lambda x, v=variant: v.infer(x, dtype=torch.float32)
    return variants


def _check_variants(runners: dict, x: torch.Tensor) -> None:
    """Every variant of ours gives the default's maps (1e-4 of their range) before anything is timed."""
    expected = runners["ours"](x).anomaly_map
    span = (expected.max() - expected.min()).item()
    for name in ("ours_small_tiles", "ours_direct"):
        if name in runners:
            error = (runners[name](x).anomaly_map - expected).abs().max().item()
            if not error <= 1e-4 * span:
                raise AssertionError(f"{name}'s maps differ from ours by {error:.3g} (range {span:.3g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-variants", action="store_true", help="time ours with the default options only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    import openvino as ov

    model = seeded_model()
    with tempfile.TemporaryDirectory() as tmp:
        (onnx_path,) = export(model, Path(tmp) / "m.onnx")
        export(model, Path(tmp) / "m", format="openvino")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        compiled = ov.Core().compile_model(
            str(Path(tmp) / "m.xml"), "CPU", {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"}
        )
        runners = {
            "ours": lambda x: model.infer(x, dtype=torch.float32),
            "onnxruntime": lambda x: session.run(None, {"images": x.numpy()}),
            "openvino": lambda x: compiled(x.numpy()),
        }
        if not args.no_variants:
            runners |= _variants()
        rows = []
        for batch in args.batches:
            x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch))
            times = {k: [] for k in runners}
            for run in runners.values():
                run(x)  # warm-up (compilation, caches)
            _check_variants(runners, x)
            for _ in range(args.repeats):
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {
                    "batch": batch,
                    "seconds": med,
                    "ms_per_image": {k: 1e3 * v / batch for k, v in med.items()},
                    "ours_speedup": {k: med[k] / med["ours"] for k in med if k != "ours"},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {describe_cpu()}",
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "openvino": ov.__version__,
        "repeats": args.repeats,
        "rows": rows,
    }
    write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
