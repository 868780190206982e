"""Scoring throughput of `efficientad infer` under torchrun with 1 and 2 (or more) processes.

    python benchmarks/sharded_scoring.py IMAGE_FOLDER [--images 160] [--procs 1 2] [--workers 1]

Takes the first --images files of IMAGE_FOLDER (symlinked into a temporary folder), a freshly
initialised EfficientAD-S (throughput does not depend on the weights), and times the whole
command (start, model load, decoding in DataLoader workers, scoring, the merge; no heatmaps)
for each process count, each into a fresh output folder (a used one would resume: skip everything). Prints one row per count with the
load average before the run, since shared machines make these numbers move.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    from efficientad_ext import EfficientAD, save_model
    from efficientad_ext.data import list_images

    paths = list_images(args.folder)[: args.images]
    with tempfile.TemporaryDirectory(prefix="sharded-scoring-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        for p in paths:
            (images / p.name).symlink_to(p.resolve())
        torch.manual_seed(0)
        save_model(EfficientAD(), tmp / "model.safetensors")
        print(
            f"{len(paths)} images from {args.folder}, EfficientAD-S 256x256, CPU, batch {args.batch_size}, "
            f"{args.workers} decoding worker(s) per rank, {os.cpu_count()} CPUs"
        )
        print("procs | seconds | images/s | load average before (1 min)")
        for run, n in enumerate(args.procs):
            load = os.getloadavg()[0]
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={n}",
                    "-m",
                    "efficientad_ext",
                    "infer",
                    str(tmp / "model.safetensors"),
                    str(images),
                    "--out",
                    str(tmp / f"out{run}"),
                    "--no-images",
                    "--workers",
                    str(args.workers),
                    "--batch-size",
                    str(args.batch_size),
                    "--device",
                    "cpu",
                ],
                env=env,
                check=True,
            )
            seconds = time.perf_counter() - t0
            print(f"{n} | {seconds:.1f} | {len(paths) / seconds:.2f} | {load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
