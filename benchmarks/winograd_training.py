"""Training steps with direct against Winograd convolutions on the CPU, interleaved, one process.

    python benchmarks/winograd_training.py --threads 2 --rounds 6 --out winograd_training.json

Two steps, each built twice from the same seed, once with the PDN's ``cpu_winograd`` off and once
on, then timed alternately (the order flips every round), float32:

* ``distill``: one :class:`~efficientad_ext.distillation.step.DistillStep` (Algorithm 3) of a
  padded PDN-S teacher, batch 16, 128x128 crops of 256x256 images, channels-last (as
  ``efficientad distill`` sets it up), random targets;
* ``train``: one :class:`~efficientad_ext.training.step.TrainStep` (Algorithm 1) of EfficientAD-S,
  batch 1 at 256x256 with a penalty image, the direct side in the memory format ``auto`` resolves
  to on this CPU and the Winograd side channels-last (what ``--cpu-winograd auto`` runs);
* ``train_autoencoder``: the same training step with the PDNs by Winograd on both sides and
  the autoencoder direct ("direct") or by Winograd too ("winograd"), both channels-last: what
  the autoencoder's Winograd layers (session 19) add to the step.

Reported per step: seconds per round for each side, the direct / Winograd ratio per round and
its median, and each side's losses step by step (the two start from the same weights, so they
agree to float32 rounding until Adam amplifies it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from efficientad_ext import EfficientAD
from efficientad_ext.distillation.config import DistillConfig
from efficientad_ext.distillation.step import DistillStep
from efficientad_ext.formats.atomic import write_text_atomically
from efficientad_ext.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from efficientad_ext.models.pdn import build_pdn
from efficientad_ext.training.config import TrainConfig
from efficientad_ext.training.precision import describe_cpu, resolve_memory_format
from efficientad_ext.training.step import TrainStep


def distill_steps() -> dict[str, Callable[[], float]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 256, 256, generator=g)
    targets = torch.randn(16, 384, 64, 64, generator=g)
    cells = 64 - 128 // 4  # a 128-pixel crop covers 32 of the 64 output cells
    crops = [tuple(c) for c in torch.randint(0, cells + 1, (16, 2), generator=g).tolist()]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    config = DistillConfig(batch_size=16, crop_size=128, lr=1e-3)
    steps = {}
    for name, winograd in (("direct", False), ("winograd", True)):
        torch.manual_seed(0)
        teacher = build_pdn("small", 384, padded=True).to(memory_format=torch.channels_last)
        teacher.cpu_winograd = winograd
        step = DistillStep(teacher, config, mean, std, "float32")
        steps[name] = lambda s=step: s(images, targets, crops)
    return steps


def train_steps(autoencoder_only: bool = False) -> dict[str, Callable[[], float]]:
    g = torch.Generator().manual_seed(0)
    images, penalty = torch.rand(1, 3, 256, 256, generator=g), torch.rand(1, 3, 256, 256, generator=g)
    direct_format = (
        "channels_last" if autoencoder_only else resolve_memory_format("auto", "float32", torch.device("cpu"))
    )
    steps = {}
    for name, winograd, memory_format in (("direct", False, direct_format), ("winograd", True, "channels_last")):
        torch.manual_seed(0)
        model = EfficientAD().train()
        model.student.cpu_winograd = model.teacher.cpu_winograd = winograd or autoencoder_only
        model.autoencoder.cpu_winograd = winograd
        step = TrainStep(model, TrainConfig(steps=1000), torch.Generator().manual_seed(1), "float32", memory_format)
        counter = iter(range(10**6))
        steps[name] = lambda s=step, c=counter: s(next(c), images, penalty)["loss"]
    return steps


def interleaved(steps: dict[str, Callable[[], float]], rounds: int) -> dict:
    losses = {name: [run()] for name, run in steps.items()}  # first call: warm-up, not timed
    seconds = {name: [] for name in steps}
    for r in range(rounds):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            losses[name].append(steps[name]())
            seconds[name].append(time.perf_counter() - start)
    ratios = [d / w for d, w in zip(seconds["direct"], seconds["winograd"])]
    return {"seconds": seconds, "losses": losses, "ratio_per_round": ratios, "median_ratio": statistics.median(ratios)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--steps", nargs="+", choices=["distill", "train", "train_autoencoder"], default=["distill", "train"]
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": describe_cpu(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    builders = {"distill": distill_steps, "train": train_steps, "train_autoencoder": lambda: train_steps(True)}
    for name in args.steps:
        result[name] = interleaved(builders[name](), args.rounds)
        s = result[name]["seconds"]
        print(
            f"{name}: direct {statistics.median(s['direct']):.2f} s, Winograd {statistics.median(s['winograd']):.2f} s "
            f"(medians), direct / Winograd per round {[round(r, 2) for r in result[name]['ratio_per_round']]}",
            flush=True,
        )
    write_text_atomically(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
