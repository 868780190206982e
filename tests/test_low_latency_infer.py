"""Low-latency inference: the fused teacher+student first layer, the cached cast weights, the
compute-dtype argument, CUDA-graph replay (CUDA only) and the absence of host syncs (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES
from efficientad_ext import PDN, EfficientAD, InferenceOptions, ModelConfig, ops
from efficientad_ext.inference import networks as inference_networks
from efficientad_ext.inference.teacher_student import teacher_student_forward


def captured_count(model: EfficientAD) -> int:
    return len(inference_networks.cache_of(model).graphs)


@pytest.fixture(autouse=True)
def _float32_cuda_without_tf32(no_tf32):
    """float32 CUDA results are compared at float32 tolerances (conftest.no_tf32)."""


def random_model(device: str, arch: str = "small", padded: bool = False, channels: int = 16) -> EfficientAD:
    model = EfficientAD(ModelConfig(arch=arch, padded=padded, teacher_channels=channels)).eval()
    with torch.no_grad():
        model.teacher_mean.normal_(0, 0.1)
        model.teacher_std.uniform_(0.5, 1.5)
        model.quantiles.copy_(torch.tensor([0.01, 0.05, 0.02, 0.06]))
    return model.to(device)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, padded", [("small", False), ("small", True), ("medium", False)])
@pytest.mark.parametrize("fuse", [True, False])
def test_one_conv_first_layer_equals_separate_networks(device, arch, padded, fuse, monkeypatch):
    widths = []
    for name in ("conv2d_relu_pool", "conv2d_relu_pool_split"):
        real_layer = getattr(ops, name)

        def spy(x, weight, *args, real_layer=real_layer):
            widths.append(weight.shape[0])
            return real_layer(x, weight, *args)

        monkeypatch.setattr(ops, name, spy)
    teacher = PDN(arch, 24, padded).to(device).eval()
    student = PDN(arch, 48, padded).to(device).eval()
    x = torch.randn(2, 3, 64, 72, device=device)
    got_t, got_s = teacher_student_forward(x, teacher, student, fuse)
    first = teacher.specs[0].out_channels
    assert widths == ([2 * first] if fuse else [])  # one convolution of both first layers, or none here
    with torch.no_grad():
        want_t, want_s = teacher(x), student(x)
    assert got_t.shape == want_t.shape and got_s.shape == want_s.shape
    # One convolution with concatenated output channels computes each output channel as the
    # separate convolution does; only the library's blocking may change the summation order.
    tol = dict(rtol=1e-4, atol=1e-5 * float(want_s.abs().max()))
    torch.testing.assert_close(got_t, want_t, **tol)
    torch.testing.assert_close(got_s, want_s, **tol)


def test_fuse_switch_is_validated():
    with pytest.raises(ValueError, match="fuse_first_layer takes device types"):
        InferenceOptions(fuse_first_layer={"tpu"})
    assert InferenceOptions().fuses_first_layer("cuda") and not InferenceOptions().fuses_first_layer("cpu")


def test_first_layers_of_different_shapes_run_separately():
    teacher, student = PDN("small", 24), PDN("medium", 48)  # 128 vs 256 first-layer channels
    x = torch.randn(1, 3, 64, 64)
    got_t, got_s = teacher_student_forward(x, teacher, student, fuse=True)
    with torch.no_grad():
        torch.testing.assert_close(got_t, teacher(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_s, student(x), rtol=1e-4, atol=1e-5)


def test_dtype_argument_is_validated():
    model = random_model("cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        model.infer(torch.rand(1, 3, 256, 256), dtype="half-ish")
    with pytest.raises(TypeError, match="dtype must be torch.float32"):
        model.infer(torch.rand(1, 3, 256, 256), dtype=torch.int32)


def test_cpu_default_dtype_is_the_models():
    model = random_model("cpu")
    assert inference_networks.default_dtype(model) == torch.float32
    assert inference_networks.default_dtype(model.double()) == torch.float64


def test_cast_weights_are_cached_and_follow_in_place_updates():
    model = random_model("cpu")
    nets = inference_networks.networks_for(model, torch.bfloat16)
    assert nets.owns_copies and nets.teacher is not model.teacher
    assert nets.student.convolutions()[0].weight.dtype == torch.bfloat16
    assert inference_networks.networks_for(model, torch.bfloat16) is nets  # cached, not recast
    address = nets.student.convolutions()[2].weight.data_ptr()
    with torch.no_grad():
        model.student.convolutions()[2].weight.mul_(-1.0)  # an in-place update (as an optimiser step)
    again = inference_networks.networks_for(model, torch.bfloat16)
    assert again is nets and again.student.convolutions()[2].weight.data_ptr() == address  # refreshed in place
    torch.testing.assert_close(
        again.student.convolutions()[2].weight, model.student.convolutions()[2].weight.bfloat16()
    )
    with torch.no_grad():  # the concatenated first layer follows too
        model.teacher.convolutions()[0].bias.add_(1.0)
    again = inference_networks.networks_for(model, torch.bfloat16)
    torch.testing.assert_close(again.first_layer[1][:128], model.teacher.convolutions()[0].bias.bfloat16())
    generation = again.generation
    model.student.convolutions()[1].weight = torch.nn.Parameter(model.student.convolutions()[1].weight.detach().clone())
    rebuilt = inference_networks.networks_for(model, torch.bfloat16)
    assert rebuilt.generation != generation  # new storage: rebuilt (and old CUDA graphs dropped)


def test_same_dtype_on_cpu_uses_the_models_own_networks():
    model = random_model("cpu")
    nets = inference_networks.networks_for(model, torch.float32)
    assert not nets.owns_copies and nets.teacher is model.teacher and nets.autoencoder is model.autoencoder


@pytest.mark.slow
def test_bfloat16_inference_is_close_to_float32_cpu():
    model = random_model("cpu")
    images = torch.rand(1, 3, 256, 256)
    full = model.infer(images, dtype=torch.float32)
    low = model.infer(images, dtype="bfloat16")
    assert low.anomaly_map.dtype == torch.float32  # maps are accumulated in float32
    err = relative_error(low.anomaly_map, full.anomaly_map)
    assert 0.0 < err < 0.05, err  # > 0: the networks really ran in bfloat16


# ----------------------------------------------------------------------------- CUDA only

cuda_only = [d for d in DEVICES if not isinstance(d, str)]


@pytest.mark.parametrize("device", cuda_only)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_equals_eager(device, dtype):
    model = random_model(device, channels=384)
    images = torch.rand(2, 3, 256, 256, device=device)
    eager = model.infer(images, dtype=dtype, cuda_graph=False)
    first = model.infer(images, dtype=dtype)  # captures
    assert captured_count(model) == 1
    other = torch.rand(2, 3, 256, 256, device=device)
    second = model.infer(other, dtype=dtype)  # replays the same graph on new data
    assert captured_count(model) == 1
    # Same kernels on the same data: equal up to any nondeterministic reduction order.
    torch.testing.assert_close(first.anomaly_map, eager.anomaly_map)
    torch.testing.assert_close(first.score, eager.score)
    torch.testing.assert_close(second.anomaly_map, model.infer(other, dtype=dtype, cuda_graph=False).anomaly_map)
    assert not torch.equal(first.anomaly_map, second.anomaly_map)  # the result returned first was not overwritten
    model.infer(torch.rand(1, 3, 256, 256, device=device), dtype=dtype)
    assert captured_count(model) == 2  # one graph per batch shape


@pytest.mark.parametrize("device", cuda_only)
def test_cuda_graph_follows_in_place_weight_updates(device):
    model = random_model(device)
    images = torch.rand(1, 3, 256, 256, device=device)
    before = model.infer(images, dtype=torch.float32)
    with torch.no_grad():
        model.student.convolutions()[-1].bias.add_(0.5)
        model.quantiles.copy_(torch.tensor([0.0, 0.1, 0.0, 0.1]))
    after = model.infer(images, dtype=torch.float32)
    want = model.reference_infer(images)
    assert not torch.allclose(before.anomaly_map, after.anomaly_map)
    torch.testing.assert_close(after.anomaly_map, want.anomaly_map, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("device", cuda_only)
def test_default_dtype_on_cuda_is_bfloat16_when_supported(device):
    model = random_model(device)
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert inference_networks.default_dtype(model) == want


@pytest.mark.parametrize("device", cuda_only)
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_infer_does_not_synchronise(device, graph):
    model = random_model(device)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, device=device)
    model.infer(images, cuda_graph=graph)  # warm-up / capture (capturing synchronises by design)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model.infer(images, cuda_graph=graph)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.anomaly_map.shape == (2, 1, 256, 256)


@pytest.mark.parametrize("device", cuda_only)
def test_bfloat16_inference_is_close_to_float32_cuda(device):
    model = random_model(device, channels=384)
    images = torch.rand(4, 3, 256, 256, device=device)
    full = model.infer(images, dtype=torch.float32, cuda_graph=False)
    low = model.infer(images, dtype=torch.bfloat16, cuda_graph=False)
    assert 0.0 < relative_error(low.anomaly_map, full.anomaly_map) < 0.05


@pytest.mark.parametrize("device", cuda_only)
def test_cuda_graphs_per_dtype_and_weight_generation(device):
    model = random_model(device)
    x = torch.rand(1, 3, 256, 256, device=device)
    model.infer(x, dtype=torch.float32)
    model.infer(x, dtype=torch.bfloat16)
    model.infer(x, dtype=torch.float32)
    assert captured_count(model) == 2  # one per dtype; alternating does not recapture
    conv = model.student.convolutions()[-1]
    conv.bias = torch.nn.Parameter(conv.bias.detach() + 0.5)  # new storage: a new weight generation
    got = model.infer(x, dtype=torch.float32)
    assert captured_count(model) == 2  # the float32 graph was replaced, the bfloat16 one kept
    torch.testing.assert_close(got.anomaly_map, model.reference_infer(x).anomaly_map, rtol=1e-2, atol=1e-3)
