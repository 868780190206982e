"""Would Winograd speed up training's convolutions on a CPU without native bf16? Times, per
student layer of PDN-S at 256x256 (unpadded, training's batch of 3 images; the last layer one
head of 1 image), the forward convolution, the input gradient and the weight gradient with
oneDNN (torch) against our ``winograd_conv2d`` (the input gradient as a full correlation with
the flipped, transposed kernel), plus the weight transforms each training step computes (the weights
change every step: ``U`` for the forward and for the input gradient), and the weight gradient with oneDNN against our
``winograd_conv2d_weight_grad`` (back-propagation through the same F(m x m, r x r), session 18;
session 5 measured this probe without it and concluded, wrongly, that the weight gradient had
no Winograd form).

    python benchmarks/winograd_backward_probe.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from efficientad_ext import ops
from efficientad_ext.inference.winograd import DEFAULT_TILE, prepare_weights
from efficientad_ext.ops.winograd_matrices import transform_tensors, transform_weight
from efficientad_ext.training.precision import describe_cpu

# (C_in, C_out, kernel, input size, images): PDN-S layers 2-4 as training runs them.
LAYERS = ((128, 256, 4, 126, 3), (256, 256, 3, 61, 3), (256, 384, 4, 59, 1))


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"CPU flags: {describe_cpu()}; torch {torch.__version__}; {args.threads} threads; best of {args.repeats}, seconds"
    )
    print(
        "| layer | forward oneDNN | forward Winograd | input grad oneDNN | input grad Winograd "
        "| weight transforms | weight grad oneDNN | weight grad Winograd | input-grad rel. error "
        "| weight-grad rel. error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cin, cout, k, h, b in LAYERS:
        x = torch.randn(b, cin, h, h)
        w = torch.randn(cout, cin, k, k) * 0.05
        grad_out = torch.randn_like(F.conv2d(x, w))
        flipped = w.flip(2, 3).transpose(0, 1).contiguous()
        w_tf, flipped_tf = prepare_weights(w), prepare_weights(flipped)
        exact = torch.nn.grad.conv2d_input(x.shape, w, grad_out)
        err = float((exact - ops.winograd_conv2d(grad_out, flipped_tf, padding=k - 1)).abs().max() / exact.abs().max())
        bt, at, g = transform_tensors(DEFAULT_TILE[k], k, torch.float32)
        exact_w = torch.nn.grad.conv2d_weight(x, w.shape, grad_out)
        wgrad = torch.ops.efficientad.winograd_conv2d_weight_grad
        err_w = float((exact_w - wgrad(x, grad_out, bt, at, g, k, 0)).abs().max() / exact_w.abs().max())
        row = [
            best_of(lambda: F.conv2d(x, w), args.repeats),
            best_of(lambda: ops.winograd_conv2d(x, w_tf), args.repeats),
            best_of(lambda: torch.nn.grad.conv2d_input(x.shape, w, grad_out), args.repeats),
            best_of(lambda: ops.winograd_conv2d(grad_out, flipped_tf, padding=k - 1), args.repeats),
            best_of(lambda: (transform_weight(w, g), transform_weight(w, g, flipped=True)), args.repeats),
            best_of(lambda: torch.nn.grad.conv2d_weight(x, w.shape, grad_out), args.repeats),
            best_of(lambda: wgrad(x, grad_out, bt, at, g, k, 0), args.repeats),
        ]
        print(
            f"| {cin}->{cout} {k}x{k} at {h}, {b} image(s) | "
            + " | ".join(f"{v:.3f}" for v in row)
            + f" | {err:.1e} | {err_w:.1e} |"
        )


if __name__ == "__main__":
    main()
