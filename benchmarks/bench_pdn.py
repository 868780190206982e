"""PDN inference (EfficientAD-S teacher and student, padded=False, 256x256 images, float32).

``test_pdn_forward`` impls, all under ``torch.no_grad()`` on the same image batch:
    ours      ``PDN.fused_forward`` (the ``efficientad::pdn_forward`` op; output channels-last)
    eager     the plain ``nn.Sequential`` on an NCHW (contiguous) image
    eager_cl  the same module converted to channels-last, on a channels-last image
    compiled  ``torch.compile`` of the plain module (static shapes), NCHW image

``test_conv2d_relu_pool`` times single layers (``ops.conv2d_relu_pool`` vs
``reference.conv2d_relu_pool``): the first layer (3->128, 4x4, ReLU, 2x2 avg-pool) at batch 1
and 8, and - to see where the PDN time goes - layers 2-4 of the student at batch 1. The layer
inputs are random, with the shapes the layer sees inside the PDN; ``ours`` and ``eager_cl`` get
them channels-last (as inside ``pdn_forward``), ``eager`` and ``compiled`` NCHW.
"""

from __future__ import annotations

import copy

import pytest
import torch

from efficientad_ext import PDN, ops, reference

IMAGE = 256
NETWORKS = {"teacher": 384, "student": 768}  # PDN small, out channels
CL = torch.channels_last


def make_pdn(out_channels: int, device: torch.device) -> PDN:
    torch.manual_seed(out_channels)
    return PDN("small", out_channels, padded=False).to(device).eval()


@pytest.mark.parametrize("impl", ["ours", "eager", "eager_cl", "compiled"])
@pytest.mark.parametrize("net", list(NETWORKS))
@pytest.mark.parametrize("batch", [1, 8])
def test_pdn_forward(measure, reference_cache, device, batch, net, impl):
    pdn = make_pdn(NETWORKS[net], device)
    image = torch.rand(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(batch)).to(device)

    if impl == "ours":
        x, fn = image, pdn.fused_forward
    elif impl == "eager":
        x, fn = image, pdn
    elif impl == "eager_cl":
        x, fn = image.contiguous(memory_format=CL), copy.deepcopy(pdn).to(memory_format=CL)
    else:
        x = image

        def warm(f):
            with torch.no_grad():
                return f(image)

        fn = measure.compile(pdn, warm)

    def run():
        with torch.no_grad():
            return fn(x)

    def reference_result():
        with torch.no_grad():
            return pdn(image)

    want = reference_cache.get(("pdn_forward", str(device), batch, net), reference_result)

    def check(got):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))

    spec = pdn.specs
    measure(
        run,
        check=check,
        op="pdn_forward",
        group=f"pdn_forward small {net} ({spec[-1].out_channels} out) B={batch} {IMAGE}x{IMAGE} padded=False",
        impl=impl,
        case=f"{net} B={batch}",
        target_s=3.0,
    )


def _layer_input_shape(pdn: PDN, index: int, batch: int) -> tuple[int, int, int, int]:
    h = w = IMAGE
    for spec in pdn.specs[:index]:
        h = h + 2 * spec.padding - spec.kernel_size + 1
        w = w + 2 * spec.padding - spec.kernel_size + 1
        if spec.pool:
            h = (h + 2 * spec.pool_padding - 2) // 2 + 1
            w = (w + 2 * spec.pool_padding - 2) // 2 + 1
    return batch, pdn.specs[index].in_channels, h, w


LAYER_CASES = [(0, 1), (0, 8), (1, 1), (2, 1), (3, 1)]  # (layer index, batch) of the student


@pytest.mark.parametrize("impl", ["ours", "eager", "eager_cl", "compiled"])
@pytest.mark.parametrize("layer,batch", LAYER_CASES, ids=[f"layer{i + 1}-B{b}" for i, b in LAYER_CASES])
def test_conv2d_relu_pool(measure, reference_cache, device, layer, batch, impl):
    pdn = make_pdn(NETWORKS["student"], device)
    spec = pdn.specs[layer]
    conv = pdn.convolutions()[layer]
    weight, bias = conv.weight.detach(), conv.bias.detach()
    shape = _layer_input_shape(pdn, layer, batch)
    # Post-ReLU activations are non-negative; the image is in [0, 1].
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(layer * 10 + batch)).to(device)
    kwargs = dict(padding=spec.padding, relu=spec.relu, pool=spec.pool, pool_padding=spec.pool_padding)

    if impl == "ours":
        xi, wi, f = x.contiguous(memory_format=CL), weight, ops.conv2d_relu_pool
    elif impl == "eager":
        xi, wi, f = x, weight, reference.conv2d_relu_pool
    elif impl == "eager_cl":
        xi, wi, f = x.contiguous(memory_format=CL), weight.contiguous(memory_format=CL), reference.conv2d_relu_pool
    else:
        xi, wi = x, weight
        f = measure.compile(reference.conv2d_relu_pool, lambda g: g(x, weight, bias, **kwargs))

    def run():
        with torch.no_grad():
            return f(xi, wi, bias, **kwargs)

    def reference_result():
        with torch.no_grad():
            return reference.conv2d_relu_pool(x, weight, bias, **kwargs)

    want = reference_cache.get(("conv2d_relu_pool", str(device), layer, batch), reference_result)

    def check(got):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))

    desc = (
        f"{spec.in_channels}->{spec.out_channels} k{spec.kernel_size} p{spec.padding}"
        + (" relu" if spec.relu else "")
        + (f" pool(p{spec.pool_padding})" if spec.pool else "")
    )
    measure(
        run,
        check=check,
        op="conv2d_relu_pool",
        group=f"conv2d_relu_pool student layer{layer + 1} ({desc}) in {list(shape)}",
        impl=impl,
        case=f"layer{layer + 1} B={batch}",
    )
