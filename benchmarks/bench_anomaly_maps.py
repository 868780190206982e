"""anomaly_maps (Algorithm 2 after the networks, fused) and anomaly_maps_raw.

Each group: one input set at EfficientAD-S feature sizes, float32;
impls: ``ours`` = ``ops.anomaly_maps`` / ``ops.anomaly_maps_raw``, ``eager`` = the
``reference`` function, ``compiled`` = ``torch.compile(reference)`` (static shapes).
"""

from __future__ import annotations

import pytest
import torch

from efficientad_ext import ops, reference

IMPLS = ["ours", "eager", "compiled"]

# (feature size h=w, pad): unpadded PDN -> 56x56 features, pad 4; padded PDN -> 64x64, pad 0.
CASES = {"unpadded 56x56 pad=4": (56, 4), "padded 64x64 pad=0": (64, 0)}
OUTPUT_SIZE = (256, 256)
C = 384  # teacher / autoencoder channels; the student has 2 * C


def make_inputs(batch: int, hw: int, device: torch.device):
    g = torch.Generator().manual_seed(batch * 1000 + hw)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    teacher = randn(batch, C, hw, hw) * 2 + 0.5
    teacher_mean = randn(C) * 0.1 + 0.5
    teacher_std = torch.rand(C, generator=g).to(device) + 1.5
    student = randn(batch, 2 * C, hw, hw)
    autoencoder = randn(batch, C, hw, hw)
    quantiles = torch.tensor([1.2, 2.9, 1.1, 2.7], device=device)
    return teacher, teacher_mean, teacher_std, student, autoencoder, quantiles


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch", [1, 8])
def test_anomaly_maps(measure, reference_cache, device, batch, case, impl):
    hw, pad = CASES[case]
    t, mean, std, s, ae, q = make_inputs(batch, hw, device)
    args = (t, mean, std, s, ae, q, OUTPUT_SIZE, pad)

    if impl == "ours":
        fn = ops.anomaly_maps
    elif impl == "eager":
        fn = reference.anomaly_maps
    else:
        fn = measure.compile(reference.anomaly_maps, lambda f: f(*args))

    want = reference_cache.get(("anomaly_maps", str(device), batch, case), lambda: reference.anomaly_maps(*args))

    def check(got):
        torch.testing.assert_close(tuple(got), tuple(want), rtol=1e-4, atol=1e-5)

    measure(
        lambda: fn(*args),
        check=check,
        op="anomaly_maps",
        group=f"anomaly_maps B={batch} {case} -> {OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]}",
        impl=impl,
        case=f"B={batch} {case}",
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_anomaly_maps_raw(measure, reference_cache, device, impl):
    batch, hw = 8, 56
    t, mean, std, s, ae, _q = make_inputs(batch, hw, device)
    args = (t, mean, std, s, ae)

    if impl == "ours":
        fn = ops.anomaly_maps_raw
    elif impl == "eager":
        fn = reference.anomaly_maps_raw
    else:
        fn = measure.compile(reference.anomaly_maps_raw, lambda f: f(*args))

    want = reference_cache.get(("anomaly_maps_raw", str(device)), lambda: reference.anomaly_maps_raw(*args))

    def check(got):
        torch.testing.assert_close(tuple(got), tuple(want), rtol=1e-4, atol=1e-5)

    measure(
        lambda: fn(*args),
        check=check,
        op="anomaly_maps_raw",
        group=f"anomaly_maps_raw B={batch} {hw}x{hw}",
        impl=impl,
        case=f"B={batch} {hw}x{hw}",
    )
