"""efficientad_ext.inference.cuda_options (issue 18, item 6; issue 27): the autoencoder and the
PDNs with cuDNN's fused conv + bias + ReLU, and the autoencoder on a second stream at batch 1,
both InferenceOptions switches that are off by default. The structure checks run on the CPU;
everything else needs a CUDA device."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import CUDA
from efficientad_ext import Autoencoder, EfficientAD, InferenceOptions, ModelConfig, build_pdn
from efficientad_ext.inference import cuda_options

needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _float32_cuda_without_tf32(no_tf32):
    """float32 CUDA results are compared at float32 tolerances (conftest.no_tf32)."""


def unfused(x, conv):
    return F.relu(conv(x))


def test_fused_forward_mirrors_the_module():
    # Same stages in the same order as Autoencoder.forward: with an unfused conv_relu the
    # result is bit-identical (guards the mirror against changes to the module).
    ae = Autoencoder(16).eval()
    x = torch.randn(1, 3, 256, 272)
    with torch.no_grad():
        want = ae(x, (56, 60))
        got = cuda_options.fused_forward(ae, x, (56, 60), conv_relu=unfused)
    assert torch.equal(got, want)
    pairs = []
    cuda_options.run_sequential(ae.encoder, x, lambda t, c: pairs.append(c) or unfused(t, c))
    assert len(pairs) == 5  # the five stride-2 Conv2d + ReLU pairs; the 8x8 conv stays unfused


def test_switches_are_off_by_default_and_ignored_on_cpu(monkeypatch):
    options = InferenceOptions()
    assert not options.cudnn_fusion and not options.autoencoder_side_stream
    # Not read from the environment (the variables of earlier versions change nothing).
    monkeypatch.setenv("EFFICIENTAD_AE_SIDE_STREAM", "1")
    monkeypatch.setenv("EFFICIENTAD_CUDNN_FUSION", "1")
    assert InferenceOptions() == options
    ae = Autoencoder(8).eval()
    x = torch.randn(1, 3, 256, 256)
    calls = []
    with torch.no_grad():
        want = ae(x, (56, 56))
        for on in (False, True):
            t, s, a = cuda_options.forward_with_pdns(
                lambda: calls.append(1) or (x, x), ae, x, (56, 56), cudnn_fusion=on, side_stream=on
            )
            assert torch.equal(a, want) and t is x and s is x
    assert calls == [1, 1]


def test_infer_on_cpu_ignores_the_cuda_switches():
    model = random_model("cpu")
    images = torch.rand(1, 3, 256, 256)
    want = model.infer(images)
    model.inference_options = replace(model.inference_options, cudnn_fusion=True, autoencoder_side_stream=True)
    got = model.infer(images)
    assert torch.equal(got.anomaly_map, want.anomaly_map)


@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("first", [0, 1])
def test_fused_pdn_forward_mirrors_the_op(arch, first):
    # The cuDNN path of the PDNs runs the same layers as pdn_forward: with an unfused conv_relu
    # it gives the op's result (float rounding of the two convolution paths only).
    pdn = build_pdn(arch).eval()
    channels = 3 if first == 0 else pdn.convolutions()[0].out_channels
    x = torch.randn(2, channels, 70, 66).relu()
    fused = []
    got = cuda_options.pdn_forward(pdn, x, first, conv_relu=lambda t, c: fused.append(c) or unfused(t, c))
    want = pdn.fused_forward(x, first=first)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    convs, specs = pdn.convolutions()[first:], pdn.specs[first:]
    assert fused == [c for c, s in zip(convs, specs) if s.relu and not s.pool]


def random_model(device, channels=384):
    model = EfficientAD(ModelConfig(arch="small", teacher_channels=channels)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    return model.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cudnn_fused_autoencoder_matches(device, dtype):
    ae = Autoencoder(64).to(device=device, dtype=dtype).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 256, 256, device=device, dtype=dtype)
    with torch.no_grad():
        want = copy.deepcopy(ae).double()(x.double(), (56, 56))
        got = cuda_options.fused_forward(ae, x, (56, 56))
    scale = float(want.abs().max())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cudnn_fused_pdn_matches(device, dtype):
    pdn = build_pdn("small").to(device=device, dtype=dtype).eval()
    x = torch.rand(2, 3, 96, 80, device=device, dtype=dtype)
    want = copy.deepcopy(pdn).double()(x.double())
    got = cuda_options.pdn_forward(pdn, x)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype
    scale = float(want.abs().max())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("switch", ["autoencoder_side_stream", "cudnn_fusion"])
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_infer_with_switch_equals_default(device, graph, switch):
    model = random_model(device)
    images = torch.rand(1, 3, 256, 256, device=device)
    want = model.infer(images, dtype=torch.bfloat16, cuda_graph=graph)
    # The options key the CUDA graphs: switching them captures a new graph (the cache is kept).
    model.inference_options = replace(model.inference_options, **{switch: True})
    got = model.infer(images, dtype=torch.bfloat16, cuda_graph=graph)
    again = model.infer(torch.rand(1, 3, 256, 256, device=device), dtype=torch.bfloat16, cuda_graph=graph)
    assert again.anomaly_map.shape == got.anomaly_map.shape
    # The side stream runs the same kernels (only their order changes); fused cuDNN kernels and
    # graph replays may pick other algorithms, which round differently in bf16.
    tol = (
        dict(rtol=1e-5, atol=1e-6) if switch == "autoencoder_side_stream" and not graph else dict(rtol=2e-2, atol=2e-2)
    )
    torch.testing.assert_close(got.anomaly_map, want.anomaly_map, **tol)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.infer(images, dtype=torch.bfloat16, cuda_graph=graph)  # no host sync with the switch on
    finally:
        torch.cuda.set_sync_debug_mode("default")
