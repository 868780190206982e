"""Training and distillation steps with glibc's heap top pad on and off (cpu_heap.py), in fresh
processes, interleaved.

    python benchmarks/heap_pad_steps.py --threads 1 --rounds 3 --out heap_pad.json

Each measurement is its own process (the heap setting is process-wide and sticks): it builds one
step of ``winograd_training.py`` (``train_winograd``: EfficientAD-S batch 1 with every qualifying
convolution by Winograd, channels-last; ``train_direct``: the same with oneDNN's direct
convolutions in the layout ``auto`` picks; ``distill_winograd``: a PDN-S distillation step, batch
16 of 128x128 crops), sets the pad (``pad``) or not (``default``) after importing everything, as
the command line does, runs 2 warm-up steps and times 5. The order of the two flips every round.
Reported: each process's median step, and per kind the medians over rounds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
KINDS = ("train_winograd", "train_direct", "distill_winograd")


def child(kind: str, pad: bool, threads: int) -> dict:
    sys.path.insert(0, str(HERE))
    from efficientad_ext.cpu_heap import pad_heap_top
    from winograd_training import distill_steps, train_steps

    torch.set_num_threads(threads)
    builder, side = {
        "train_winograd": (train_steps, "winograd"),
        "train_direct": (train_steps, "direct"),
        "distill_winograd": (distill_steps, "winograd"),
    }[kind]
    step = builder()[side]
    applied = pad_heap_top() if pad else 0
    for _ in range(2):
        step()
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"kind": kind, "pad_bytes": applied, "seconds": seconds, "median": statistics.median(seconds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--pad", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.pad, args.threads)))
        return 0
    if args.out is None:
        ap.error("--out is required")
    from efficientad_ext.formats.atomic import write_text_atomically
    from efficientad_ext.training.precision import describe_cpu

    runs = []
    for r in range(args.rounds):
        for kind in args.kinds:
            for pad in (False, True) if r % 2 == 0 else (True, False):
                cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads)]
                out = subprocess.run(cmd + (["--pad"] if pad else []), capture_output=True, text=True, check=True)
                run = {"round": r, "pad": pad, **json.loads(out.stdout.strip().splitlines()[-1])}
                runs.append(run)
                print(f"round {r} {kind} {'pad' if pad else 'default'}: {run['median']:.3f} s", flush=True)
    summary = {}
    for kind in args.kinds:
        medians = {
            side: statistics.median(x["median"] for x in runs if x["kind"] == kind and x["pad"] == pad)
            for side, pad in (("default", False), ("pad", True))
        }
        summary[kind] = {**medians, "default_over_pad": medians["default"] / medians["pad"]}
        print(
            f"{kind}: default {medians['default']:.3f} s, pad {medians['pad']:.3f} s, "
            f"{medians['default'] / medians['pad']:.2f}x",
            flush=True,
        )
    result = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": describe_cpu(),
        "threads": args.threads,
        "torch": torch.__version__,
        "runs": runs,
        "summary": summary,
    }
    write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
