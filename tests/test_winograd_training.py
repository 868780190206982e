"""Training by Winograd on the CPU: ``winograd_conv2d_trainable`` (forward, input and weight
gradients) and ``efficientad::winograd_conv2d_weight_grad`` against the direct convolution
(``reference``), the PDN switch, and the training / distillation options.

Tolerance: the same function as the direct convolution with other rounding. Measured max
|error| / max |value| ~2e-6 to 5e-6 in float32 for output, input gradient and weight gradient
(session 18, odd shapes, both tile sets); the tests allow 2e-5 in float32 and 1e-11 in float64,
the forward op's bounds (tests/test_winograd.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from efficientad_ext import reference
from efficientad_ext.distillation.config import DistillConfig
from efficientad_ext.inference.winograd import TILES
from efficientad_ext.models.autoencoder import Autoencoder
from efficientad_ext.models.pdn import PDN
from efficientad_ext.ops import winograd_conv2d_trainable, winograd_trainable_input, winograd_trainable_layer
from efficientad_ext.ops.winograd_matrices import transform_tensors
from efficientad_ext.training.config import TrainConfig
from efficientad_ext.training.precision import resolve_cpu_winograd

REL_TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.mark.parametrize("tiles", ["large", "small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, c_out, k, padding",
    [
        ((2, 37, 17, 19), 41, 4, 3),  # padded PDN 4x4 layer: input gradient unpadded
        ((1, 70, 13, 11), 130, 3, 1),  # channels not multiples of the 64-block
        ((3, 9, 12, 12), 5, 4, 0),  # PDN last layer: input gradient padded by 3
        ((2, 6, 10, 9), 7, 3, 2),  # padding 2 on a 3x3 kernel: the output grows
        ((1, 5, 4, 4), 3, 4, 1),  # fewer output pixels than one tile
    ],
)
def test_output_and_gradients_match_the_direct_convolution(tiles, dtype, shape, c_out, k, padding):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weight = (torch.randn(c_out, shape[1], k, k, dtype=dtype) / (shape[1] * k * k) ** 0.5).requires_grad_()
    bias = torch.randn(c_out, dtype=dtype, requires_grad=True)
    got = winograd_conv2d_trainable(x, weight, bias, padding, tile=TILES[tiles][k])
    expected = reference.winograd_conv2d_trainable(x, weight, bias, padding)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(expected)
    got_grads = torch.autograd.grad(got, (x, weight, bias), grad)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), grad)
    assert _relative_error(got.detach(), expected.detach()) < REL_TOL[dtype]
    for name, g, e in zip(("input", "weight", "bias"), got_grads, expected_grads):
        assert g.shape == e.shape, name
        assert _relative_error(g, e) < REL_TOL[dtype], name


def test_non_contiguous_inputs_and_a_weight_slice():
    torch.manual_seed(1)
    base = torch.randn(2, 40, 11, 13).contiguous(memory_format=torch.channels_last)
    x = base[:, 3:38].requires_grad_(False)  # a channel slice of a channels-last tensor
    x_t = torch.randn(2, 35, 13, 11).transpose(2, 3)  # spatially transposed, neither layout
    full = torch.randn(30, 35, 4, 4, requires_grad=True)
    weight = full[7:19]  # output-channel slice, as PDN's heads take (autograd flows to `full`)
    for inp in (x, x_t):
        inp = inp.detach().requires_grad_()
        got = winograd_conv2d_trainable(inp, weight, None, 3)
        expected = F.conv2d(inp, weight, None, padding=3)
        grad = torch.randn_like(expected)
        g_inp, g_full = torch.autograd.grad(got, (inp, full), grad)
        e_inp, e_full = torch.autograd.grad(expected, (inp, full), grad)
        assert _relative_error(got.detach(), expected.detach()) < 2e-5
        assert _relative_error(g_inp, e_inp) < 2e-5
        assert _relative_error(g_full[7:19], e_full[7:19]) < 2e-5
        assert torch.equal(g_full[:7], torch.zeros_like(g_full[:7])) and torch.equal(g_full[19:], g_full[19:] * 0)


def test_weight_grad_op_matches_the_reference_and_fails_a_wrong_transform():
    torch.manual_seed(2)
    x = torch.randn(2, 33, 15, 14)
    gy = torch.randn(2, 20, 15, 14)  # 3x3, padding 1: same size
    bt, at, g = transform_tensors(6, 3, torch.float32)
    got = torch.ops.efficientad.winograd_conv2d_weight_grad(x, gy, bt, at, g, 3, 1)
    expected = reference.winograd_conv2d_weight_grad(x.double(), gy.double(), 3, 1)
    assert _relative_error(got, expected) < 2e-5
    # Negative control: G off by 1/64 in one entry must fail the same bound.
    broken = g.clone()
    broken[3, 1] += 1 / 64
    wrong = torch.ops.efficientad.winograd_conv2d_weight_grad(x, gy, bt, at, broken, 3, 1)
    assert _relative_error(wrong, expected) > 1e-3


def test_gradcheck():
    torch.manual_seed(3)
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    for k, padding in ((4, 3), (4, 0), (3, 1), (3, 2)):
        w = torch.randn(2, 3, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w, b, p=padding: winograd_conv2d_trainable(x, w, b, p), (x, w, b))


def test_opcheck():
    torch.manual_seed(4)
    x = torch.randn(2, 8, 9, 10, requires_grad=True)
    w = torch.randn(6, 8, 4, 4, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    torch.library.opcheck(torch.ops.efficientad.winograd_conv2d_trainable.default, (x, w, b, 3, 5))
    torch.library.opcheck(torch.ops.efficientad.winograd_conv2d_trainable.default, (x, w, None, 1, 5))
    bt, at, g = transform_tensors(5, 4, torch.float32)
    gy = torch.randn(2, 6, 12, 13)
    torch.library.opcheck(torch.ops.efficientad.winograd_conv2d_weight_grad.default, (x.detach(), gy, bt, at, g, 4, 3))


def test_torch_compile_forward_and_backward():
    torch.manual_seed(5)
    w = torch.randn(6, 32, 4, 4, requires_grad=True)
    x = torch.randn(1, 32, 12, 12, requires_grad=True)

    def f(inp, weight):
        return (winograd_conv2d_trainable(inp, weight, None, 3).relu() ** 2).mean()

    compiled = torch.compile(f, fullgraph=True)
    got = torch.autograd.grad(compiled(x, w), (x, w))
    expected = torch.autograd.grad(f(x, w), (x, w))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_bad_arguments_are_named():
    x = torch.randn(1, 8, 9, 9)
    with pytest.raises(ValueError, match=r"padding must be in \[0, 3\] for a 4x4 kernel, got 4"):
        winograd_conv2d_trainable(x, torch.randn(4, 8, 4, 4), None, 4)
    with pytest.raises(ValueError, match="no Winograd tile for 5x5 kernels"):
        winograd_conv2d_trainable(x, torch.randn(4, 8, 5, 5))
    with pytest.raises(ValueError, match="square kernel"):
        winograd_conv2d_trainable(x, torch.randn(4, 8, 3, 4))
    with pytest.raises(TypeError, match="padding must be an integer"):
        winograd_conv2d_trainable(x, torch.randn(4, 8, 3, 3), None, 1.0)
    with pytest.raises(ValueError, match="input must have 8 channels"):
        winograd_conv2d_trainable(torch.randn(1, 7, 9, 9), torch.randn(4, 8, 3, 3), None, 1)
    with pytest.raises(TypeError, match="weight must have input's dtype torch.float32, got torch.float64"):
        winograd_conv2d_trainable(x, torch.randn(4, 8, 3, 3, dtype=torch.float64), None, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        winograd_conv2d_trainable(x.half(), torch.randn(4, 8, 3, 3).half(), None, 1)
    with pytest.raises(ValueError, match="runs on the CPU only"):
        winograd_conv2d_trainable(x.to("meta"), torch.randn(4, 8, 3, 3, device="meta"), None, 1)
    bt, at, g = transform_tensors(6, 3, torch.float32)
    raw = torch.ops.efficientad.winograd_conv2d_weight_grad
    with pytest.raises(ValueError, match=r"grad_output must be \[1, K, 9, 9\]"):
        raw(x, torch.randn(1, 4, 8, 9), bt, at, g, 3, 1)
    with pytest.raises(ValueError, match=r"weight_tf_matrix must be \[8, 3\]"):
        raw(x, torch.randn(1, 4, 9, 9), bt, at, g[:, :2], 3, 1)
    with pytest.raises(TypeError, match="grad_output must have input's dtype Float, got Double"):
        raw(x, torch.randn(1, 4, 9, 9, dtype=torch.float64), bt, at, g, 3, 1)


@pytest.mark.parametrize("padded", [True, False])
def test_pdn_with_cpu_winograd_equals_the_direct_pdn(padded):
    # float64: the same function and gradients to rounding, every parameter, heads included.
    torch.manual_seed(6)
    pdn = PDN("small", 384, padded=padded).double()
    x = torch.randn(2, 3, 64, 72, dtype=torch.float64)
    heads = ((1, 0, 100), (1, 100, 384))
    expected = pdn(x)
    expected_grads = torch.autograd.grad(expected.square().mean(), list(pdn.parameters()))
    expected_heads = pdn(x, heads=heads)
    pdn.cpu_winograd = True
    got = pdn(x)
    got_grads = torch.autograd.grad(got.square().mean(), list(pdn.parameters()))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(got.detach(), expected.detach()) < 1e-11
    for g, e in zip(got_grads, expected_grads):
        assert _relative_error(g, e) < 1e-11
    for g, e in zip(pdn(x, heads=heads), expected_heads):
        assert _relative_error(g.detach(), e.detach()) < 1e-11
    assert "cpu_winograd" not in str(pdn.state_dict().keys())


def test_pdn_with_cpu_winograd_in_float32_is_as_close_to_float64_as_the_direct_pdn():
    # A float32 forward (either path) moves a few pre-activations across ReLU's kink, which
    # changes their gradient entirely: measured over 3 seeds, the direct and the Winograd PDN
    # each had one seed at ~3e-4 relative L2 error against float64 (the other seeds ~2e-6).
    # So gradients are bounded in L2 at 1e-3 here; the outputs (continuous) at 2e-5.
    torch.manual_seed(6)
    pdn = PDN("small", 384, padded=True)
    x = torch.randn(2, 3, 64, 72)
    pdn.cpu_winograd = True
    got = pdn(x)
    got_grads = torch.autograd.grad(got.square().mean(), list(pdn.parameters()))
    ref_pdn = PDN("small", 384, padded=True).double()
    ref_pdn.load_state_dict(pdn.state_dict())
    expected = ref_pdn(x.double())
    expected_grads = torch.autograd.grad(expected.square().mean(), list(ref_pdn.parameters()))
    assert _relative_error(got.detach(), expected.detach()) < 2e-5
    for g, e in zip(got_grads, expected_grads):
        assert ((g.double() - e).norm() / e.norm()).item() < 1e-3


@pytest.mark.parametrize("training", [False, True])
def test_autoencoder_with_cpu_winograd_equals_the_direct_autoencoder(training):
    # float64, 256x256 (the smallest input it takes), every parameter's gradient and the input's.
    # Training mode: dropout draws its mask in memory order, and the Winograd layers write
    # channels-last, so the direct side runs channels-last too (as training does with Winograd
    # on); then a reseeded generator gives both the same masks and the same function.
    torch.manual_seed(7)
    ae = Autoencoder(out_channels=48).double().train(training)
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64, requires_grad=True)
    if training:
        ae = ae.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    params = [x, *ae.parameters()]
    torch.manual_seed(8)
    expected = ae(x, (56, 56))
    expected_grads = torch.autograd.grad(expected.square().mean(), params)
    ae.cpu_winograd = True
    torch.manual_seed(8)
    got = ae(x, (56, 56))
    got_grads = torch.autograd.grad(got.square().mean(), params)
    assert got.shape == expected.shape == (1, 48, 56, 56)
    assert _relative_error(got.detach(), expected.detach()) < 1e-11
    for g, e in zip(got_grads, expected_grads):
        assert _relative_error(g, e) < 1e-11
    assert "cpu_winograd" not in str(ae.state_dict().keys())
    # The layers it takes: the decoder's six 4x4 and the head's two 3x3, never the encoder's.
    taken = [winograd_trainable_layer(m) for m in ae.modules() if isinstance(m, torch.nn.Conv2d)]
    assert taken == [False] * 6 + [True] * 8
    # float32 against float64 (see the PDN's float32 test for why gradients are bounded in L2).
    ae32 = Autoencoder(out_channels=48).train(training)
    ae32.load_state_dict(ae.state_dict())
    ae32.cpu_winograd = True
    torch.manual_seed(8)
    got32 = ae32(x.detach().float(), (56, 56))
    assert _relative_error(got32.detach(), expected.detach()) < 2e-5


def test_pdn_keeps_the_direct_path_where_winograd_does_not_apply():
    pdn = PDN("small", 384, padded=True)
    pdn.cpu_winograd = True
    x = torch.randn(1, 3, 64, 64)
    assert winograd_trainable_input(x) and not winograd_trainable_input(x.half())
    assert [winograd_trainable_layer(c) for c in pdn.convolutions()] == [False, True, True, True]  # 3 channels: direct
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd_trainable_input(x)
        got = pdn(x)
    pdn.cpu_winograd = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = pdn(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert not winograd_trainable_layer(torch.nn.Conv2d(64, 64, 3, stride=2, padding=1))
    assert not winograd_trainable_layer(torch.nn.Conv2d(64, 64, 3, padding=3))


def test_training_and_inference_choose_their_winograd_layers_by_one_rule():
    from efficientad_ext.ops.winograd_layers import MIN_CHANNELS, winograd_layer
    from efficientad_ext.ops.winograd_matrices import DEFAULT_TILE

    layers = [*PDN("small", 384).convolutions(), *PDN("medium", 384).convolutions()]
    layers += [m for m in Autoencoder().modules() if isinstance(m, torch.nn.Conv2d)]
    # Every layer of the shipped networks: the training path takes exactly what inference plans.
    assert [winograd_trainable_layer(c) for c in layers] == [winograd_layer(c, DEFAULT_TILE) for c in layers]
    assert any(winograd_trainable_layer(c) for c in layers) and not all(winograd_trainable_layer(c) for c in layers)
    # Where they may differ: padding beyond r - 1 has a forward but no Winograd input gradient.
    wide = torch.nn.Conv2d(64, 64, 3, padding=3)
    assert winograd_layer(wide, DEFAULT_TILE) and not winograd_layer(wide, DEFAULT_TILE, backward=True)
    assert not winograd_layer(torch.nn.Conv2d(MIN_CHANNELS - 1, 64, 3, padding=1), DEFAULT_TILE)
    assert winograd_layer(torch.nn.Conv2d(MIN_CHANNELS, 64, 3, padding=1), DEFAULT_TILE)
    assert not winograd_layer(torch.nn.Conv2d(64, 64, (3, 4)), DEFAULT_TILE)
    assert not winograd_layer(torch.nn.Conv2d(64, 64, 3, groups=2), DEFAULT_TILE)
    assert not winograd_layer(torch.nn.Conv2d(64, 64, 3, dilation=2), DEFAULT_TILE)
    assert not winograd_layer(torch.nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"), DEFAULT_TILE)
    assert not winograd_layer(torch.nn.Conv2d(64, 64, 5, padding=2), DEFAULT_TILE)


def test_the_option_resolves_per_device_and_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cpu_winograd("auto", "float32", cpu)
    assert not resolve_cpu_winograd("auto", "bfloat16", cpu)
    assert not resolve_cpu_winograd("auto", "float32", cuda)
    assert not resolve_cpu_winograd("off", "float32", cpu)
    with pytest.raises(ValueError, match="cpu_winograd must be one of auto, off, got 'on'"):
        resolve_cpu_winograd("on", "float32", cpu)
    assert TrainConfig().cpu_winograd == "auto" and DistillConfig().cpu_winograd == "auto"
    with pytest.raises(ValueError, match="cpu_winograd must be one of auto, off"):
        TrainConfig(cpu_winograd="yes")
    with pytest.raises(ValueError, match="cpu_winograd must be one of auto, off"):
        DistillConfig(cpu_winograd="yes")


# The weight gradient's adjoint transform in every copy the CPU can run (as tests/test_winograd.py
# checks the forward's), each in its own process: the choice is made once per process.
_ISA_CHECK = """
import torch
from efficientad_ext import reference
from efficientad_ext.ops import winograd_conv2d_trainable
torch.manual_seed(0)
for c, k, r, pad, tile in [(70, 130, 3, 1, 6), (64, 96, 4, 3, 5), (17, 33, 4, 0, 3), (40, 9, 3, 2, 4)]:
    x = torch.randn(2, c, 15, 13).contiguous(memory_format=torch.channels_last)[:, 1:].requires_grad_()
    w = torch.randn(k, c - 1, r, r, requires_grad=True)
    got = winograd_conv2d_trainable(x, w, None, pad, tile)
    ref = reference.winograd_conv2d_trainable(x, w, None, pad)
    gy = torch.randn_like(ref)
    for g, e in zip(torch.autograd.grad(got, (x, w), gy), torch.autograd.grad(ref, (x, w), gy)):
        err = ((g.double() - e.double()).abs().max() / e.double().abs().max()).item()
        assert err < 2e-5, (c, k, r, tile, err)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_copy_of_the_gradients(isa):
    env = {**os.environ, "EFFICIENTAD_CPU_ISA": isa}
    done = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
