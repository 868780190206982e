"""The op cases benchmarks/device_check.sh runs under `compute-sanitizer --tool memcheck`
(issue 18, item 4): small, fast, each compared with its reference, so they are ordinary CUDA
tests too. Quantile with 7 q values, the hard-feature loss forward and backward, anomaly_maps
on NCHW, channels-last and mixed layouts, and the convolution layer with pool_padding (the
16-byte and the scalar epilogue, and the two-output split). Skips without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import test_anomaly_maps
import test_cuda_epilogue
import test_cuda_quantile
import test_hard_feature_loss
from conftest import CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _float32_cuda_without_tf32(no_tf32):
    """float32 CUDA results are compared at float32 tolerances (conftest.no_tf32)."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quantile_seven_q(dtype):
    test_cuda_quantile.test_seven_q_values_continuous(dtype, 1001)


def test_quantile_seven_q_few_prefixes():
    test_cuda_quantile.test_seven_q_values_few_distinct_prefixes(torch.float32, 3)


@pytest.mark.parametrize("reduction", test_hard_feature_loss.REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hard_loss_forward_backward(reduction, dtype):
    test_hard_feature_loss.test_forward_backward_match_reference("cuda", dtype, reduction, (3, 13, 9, 11))


def test_hard_loss_channel_slice_and_channels_last():
    test_hard_feature_loss.test_student_channel_slice_and_channels_last("cuda")


def test_anomaly_maps_nchw():
    test_anomaly_maps.test_maps_match_reference("cuda", torch.float32, (3, 16, 13, 9), (40, 27), 1)


def test_anomaly_maps_channels_last_and_mixed_layouts():
    test_anomaly_maps.test_layouts_channels_last_and_slices("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c_out", [16, 7])  # 16-byte loads / scalar fallback
def test_conv_pool_padding(dtype, c_out):
    test_cuda_epilogue.test_bias_relu_pool_in_one_pass(dtype, c_out, True, True, 1)


def test_conv_split_pool_padding():
    test_cuda_epilogue.test_split_halves_are_dense_and_equal_the_slices(torch.bfloat16, 32, 16, True)
    test_cuda_epilogue.test_split_halves_are_dense_and_equal_the_slices(torch.float32, 10, 3, True)
