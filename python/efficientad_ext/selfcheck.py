"""``efficientad selfcheck``: check this installation end to end and time it.

Runs the EfficientAD-S inference path (teacher and student PDNs, autoencoder, anomaly maps)
at 256x256 on random images with freshly initialised networks, once through the fused ops
and once through plain torch.nn / the references, checks that both agree, and prints the
build, the agreement and the per-image latency of each path on this machine.
"""

from __future__ import annotations

import time

import torch

import efficientad_ext
from efficientad_ext import Autoencoder, build_pdn, ops
from efficientad_ext.models.autoencoder import MIN_IMAGE_SIZE
from efficientad_ext.ops import reference


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def selfcheck(
    arch: str = "small", batch: int = 1, size: int = 256, repeats: int = 5, device: str | None = None
) -> bool:
    """Runs the check (EfficientAD-``arch``, ``batch`` random ``size`` x ``size`` images,
    median of ``repeats`` timed runs per path, on ``device``, default CUDA when available),
    prints the build, the agreement and the latencies; returns whether both paths agree."""
    if arch not in ("small", "medium"):
        raise ValueError(f"arch must be 'small' or 'medium', got {arch!r}")
    if size < MIN_IMAGE_SIZE or batch < 1 or repeats < 1:
        raise ValueError(f"size must be >= {MIN_IMAGE_SIZE} and batch, repeats >= 1, got {size}, {batch}, {repeats}")
    device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = efficientad_ext.build_info()
    print(
        f"efficientad_ext {efficientad_ext.__version__}: torch {info['torch_version']}, "
        f"CUDA kernels: {info['cuda_kernels']} {info['cuda_archs']}, device: {device_name}, threads: {torch.get_num_threads()}"
    )
    torch.manual_seed(0)
    device = torch.device(device_name)
    teacher = build_pdn(arch, 384, padded=False).to(device).eval()
    student = build_pdn(arch, 768, padded=False).to(device).eval()
    autoencoder = Autoencoder(384).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device)
    feat = teacher.output_size(size, size)
    mean, std = torch.randn(384, device=device) * 0.1, torch.rand(384, device=device) + 0.5
    quantiles = torch.tensor([0.5, 2.0, 0.4, 1.5], device=device)
    pad, out_size = 4, (size, size)

    @torch.no_grad()
    def fused():
        t, s = teacher.fused_forward(images), student.fused_forward(images)
        return ops.anomaly_maps(t, mean, std, s, autoencoder(images, feat), quantiles, out_size, pad)

    @torch.no_grad()
    def plain():
        t, s = teacher(images), student(images)
        return reference.anomaly_maps(t, mean, std, s, autoencoder(images, feat), quantiles, out_size, pad)

    got, expected = fused(), plain()
    map_err = (got.anomaly_map - expected[0]).abs().max().item()
    score_err = (got.score - expected[1]).abs().max().item()
    scale = expected[0].abs().max().item()
    ok = map_err <= 1e-4 * max(scale, 1.0) and score_err <= 1e-4 * max(scale, 1.0)
    print(
        f"fused vs plain torch: max |map diff| = {map_err:.2e}, max |score diff| = {score_err:.2e} "
        f"(map scale {scale:.2e}) -> {'OK' if ok else 'MISMATCH'}"
    )

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fused_ms = _median_ms(lambda: (fused(), sync()), repeats) / batch
    plain_ms = _median_ms(lambda: (plain(), sync()), repeats) / batch
    print(
        f"EfficientAD-{arch[0].upper()} {size}x{size}, batch {batch}, random weights: "
        f"fused {fused_ms:.1f} ms/image, plain torch {plain_ms:.1f} ms/image ({plain_ms / fused_ms:.2f}x)"
    )
    return ok
