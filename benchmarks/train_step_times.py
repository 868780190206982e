"""Median training-step time of EfficientAD-S at 256x256 (with penalty images), batch 1 and 8."""

import time

import torch

from efficientad_ext import EfficientAD
from efficientad_ext.training import TrainConfig, TrainStep

torch.manual_seed(0)
for b, n in ((1, 6), (8, 3)):
    model = EfficientAD()
    step = TrainStep(model, TrainConfig(steps=100, batch_size=b), torch.Generator().manual_seed(0))
    imgs, pen = torch.rand(b, 3, 256, 256), torch.rand(b, 3, 256, 256)
    step(0, imgs, pen)  # warm-up
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i + 1, imgs, pen)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(
        f"batch {b}: median {med:.2f} s/step over {n} steps ({med / b:.2f} s per image), threads {torch.get_num_threads()}"
    )
