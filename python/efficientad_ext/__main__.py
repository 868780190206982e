"""`python -m efficientad_ext ...` is the `efficientad` command line (see cli.py);
`efficientad selfcheck` runs :func:`selfcheck`: check this installation end to end and time it.

Runs the EfficientAD-S inference path (teacher and student PDNs, autoencoder, anomaly maps)
at 256x256 on random images with freshly initialised networks, once through the fused ops
and once through plain torch.nn / the references, checks that both agree, and prints the
build, the agreement and the per-image latency of each path on this machine.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import efficientad_ext
from efficientad_ext import Autoencoder, build_pdn, ops, reference


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def selfcheck(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="efficientad selfcheck", description="check the installation")
    parser.add_argument("--arch", choices=["small", "medium"], default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (>= 256)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    info = efficientad_ext.build_info()
    print(f"efficientad_ext {efficientad_ext.__version__}: torch {info['torch_version']}, "
          f"CUDA kernels: {info['cuda_kernels']} {info['cuda_archs']}, device: {args.device}, threads: {torch.get_num_threads()}")
    torch.manual_seed(0)
    device = torch.device(args.device)
    teacher = build_pdn(args.arch, 384, padded=False).to(device).eval()
    student = build_pdn(args.arch, 768, padded=False).to(device).eval()
    autoencoder = Autoencoder(384).to(device).eval()
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    feat = teacher.output_size(args.size, args.size)
    mean, std = torch.randn(384, device=device) * 0.1, torch.rand(384, device=device) + 0.5
    quantiles = torch.tensor([0.5, 2.0, 0.4, 1.5], device=device)
    pad, out_size = 4, (args.size, args.size)

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
    print(f"fused vs plain torch: max |map diff| = {map_err:.2e}, max |score diff| = {score_err:.2e} "
          f"(map scale {scale:.2e}) -> {'OK' if ok else 'MISMATCH'}")

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fused_ms = _median_ms(lambda: (fused(), sync()), args.repeats) / args.batch
    plain_ms = _median_ms(lambda: (plain(), sync()), args.repeats) / args.batch
    print(f"EfficientAD-{args.arch[0].upper()} {args.size}x{args.size}, batch {args.batch}, random weights: "
          f"fused {fused_ms:.1f} ms/image, plain torch {plain_ms:.1f} ms/image ({plain_ms / fused_ms:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    from .cli import main

    sys.exit(main())
