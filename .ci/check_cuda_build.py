"""Fails unless the installed efficientad_ext has CUDA kernels for every device-specific op."""
import sys

import torch

import efficientad_ext

OPS = ["quantile", "hard_feature_loss", "hard_feature_loss_backward", "anomaly_maps_raw", "anomaly_maps", "conv2d_relu_pool",
       "conv2d_relu_pool_split"]

info = efficientad_ext.build_info()
print("build_info:", info)
missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"efficientad::{op}", "CUDA")]
if not info["cuda_kernels"] or missing:
    sys.exit(f"CUDA kernels missing: cuda_kernels={info['cuda_kernels']}, ops without a CUDA kernel: {missing}")
print(f"CUDA kernels registered for all {len(OPS)} ops (archs {info['cuda_archs']})")
