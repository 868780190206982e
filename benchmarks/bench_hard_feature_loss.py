"""hard_feature_loss, forward + backward (the student-training hot path).

Each timed call: ``loss = f(teacher, student, 0.999, reduction); loss.backward()`` with a
float32 ``student`` leaf that requires grad (its ``.grad`` is reset to None first, the teacher
does not require grad). Impls: ``ours`` = ``ops.hard_feature_loss`` (radix-select threshold +
fused backward), ``eager`` = ``reference.hard_feature_loss`` (torch.quantile + boolean mask),
``compiled`` = ``torch.compile(reference.hard_feature_loss)`` (static shapes).
"""

from __future__ import annotations

import pytest
import torch

from efficientad_ext import ops, reference

IMPLS = ["ours", "eager", "compiled"]
P = 0.999
C = 384
SIZES = [56, 64]  # unpadded / padded PDN feature size


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["batch", "per_sample"])
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("batch", [1, 8])
def test_hard_feature_loss_fwd_bwd(measure, reference_cache, device, batch, hw, reduction, impl):
    g = torch.Generator().manual_seed(batch * 1000 + hw)
    teacher = torch.randn(batch, C, hw, hw, generator=g).to(device)
    student = torch.randn(batch, C, hw, hw, generator=g).to(device).requires_grad_(True)

    def step(f):
        student.grad = None
        loss = f(teacher, student, P, reduction)
        loss.backward()
        return loss

    if impl == "ours":
        fn = ops.hard_feature_loss
    elif impl == "eager":
        fn = reference.hard_feature_loss
    else:
        fn = measure.compile(reference.hard_feature_loss, step)

    # Never time a wrong answer: loss and gradient against the eager reference. Not elementwise:
    # above 2^23 elements torch.quantile (float32) rounds the position q * (n - 1) to float32
    # and can pick the lower order statistic as threshold, so the reference may select one
    # more element at the boundary than the exact (float64-position) threshold of ours.
    def reference_result():
        loss = step(reference.hard_feature_loss).detach()
        return loss, student.grad.clone()

    want_loss, want_grad = reference_cache.get(
        ("hard_feature_loss", str(device), batch, hw, reduction), reference_result
    )

    def check(got_loss):
        torch.testing.assert_close(got_loss.detach(), want_loss, rtol=1e-4, atol=1e-6)
        grad_err = float((student.grad - want_grad).abs().sum() / want_grad.abs().sum())
        assert grad_err < 1e-3, f"gradient differs from the reference: relative L1 error {grad_err:.2e}"

    measure(
        lambda: step(fn),
        check=check,
        op="hard_feature_loss",
        group=f"hard_feature_loss fwd+bwd B={batch} {C}x{hw}x{hw} {reduction}",
        impl=impl,
        case=f"B={batch} {hw}x{hw} {reduction}",
    )
