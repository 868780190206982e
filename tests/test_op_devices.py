"""Every op refuses tensor arguments on different devices, naming them, also when one of them is
a meta tensor (such calls reach the fake kernels, not the C++ checks)."""

from __future__ import annotations

import pytest
import torch

import efficientad_ext  # noqa: F401  (registers the ops)
from efficientad_ext.inference.winograd import prepare_weights

ops = torch.ops.efficientad
META = torch.device("meta")


def meta(t: torch.Tensor) -> torch.Tensor:
    return t.to(META)


def _calls():
    """(op name, argument name made meta, a function of the meta tensor making the call)."""
    x, w, b = torch.rand(1, 4, 8, 8), torch.rand(5, 4, 3, 3), torch.rand(5)
    t, s, a = torch.rand(1, 3, 4, 4), torch.rand(1, 6, 4, 4), torch.rand(1, 3, 4, 4)
    mean, std, q = torch.zeros(3), torch.ones(3), torch.tensor([0.0, 1.0, 0.0, 1.0])
    prep = prepare_weights(w, b)
    return [
        # the example: a meta bias with CPU input and weight
        ("conv2d_relu_pool", "bias", lambda: ops.conv2d_relu_pool(x, w, meta(b), 0, True, False, 0)),
        ("conv2d_relu_pool", "input", lambda: ops.conv2d_relu_pool(meta(x), w, b, 0, True, False, 0)),
        ("conv2d_relu_pool", "bias", lambda: ops.conv2d_relu_pool_split(x, w, meta(b), 0, True, False, 0, 2)),
        ("pdn_forward", "weights[0]", lambda: ops.pdn_forward(x, [meta(w)], [b], [0], [True], [False], [0])),
        ("pdn_forward", "biases[0]", lambda: ops.pdn_forward(x, [w], [meta(b)], [0], [True], [False], [0])),
        ("anomaly_maps", "quantiles", lambda: ops.anomaly_maps(t, mean, std, s, a, meta(q), [8, 8], 0)),
        ("anomaly_maps", "student", lambda: ops.anomaly_maps(t, mean, std, meta(s), a, q, [8, 8], 0)),
        ("anomaly_maps_raw", "teacher_std", lambda: ops.anomaly_maps_raw(t, mean, meta(std), s, a)),
        ("hard_feature_loss", "student", lambda: ops.hard_feature_loss(t, meta(t.clone()), 0.9, False)),
        (
            "winograd_conv2d",
            "weight_tf",
            lambda: ops.winograd_conv2d(
                x, meta(prep.weight_tf), prep.bias, prep.input_tf, prep.output_tf, prep.kernel_size, 1, False, False, 0
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(len(_calls())))
def test_mixed_meta_and_cpu_arguments_are_refused_by_name(index):
    op, name, call = _calls()[index]
    with pytest.raises(ValueError, match=f"{op}: all tensor arguments must be on one device; ") as info:
        call()
    assert f"{name} is on meta" in str(info.value)


def test_all_meta_arguments_still_give_shapes():
    x, w, b = (torch.rand(1, 4, 8, 8, device=META), torch.rand(5, 4, 3, 3, device=META), torch.rand(5, device=META))
    out = ops.conv2d_relu_pool(x, w, b, 1, True, True, 0)
    assert out.device == META and tuple(out.shape) == (1, 5, 4, 4)
