"""Conformance with anomalib 2.7.0's ``EfficientAdModel`` (skipped when anomalib is not
importable; CI installs it in its CUDA-torch venv, see .ci/run and .ci/peers-requirements.txt).

The same seeded random weights, teacher mean/std and quantiles go into anomalib's model and,
through :mod:`efficientad_ext.formats.anomalib`, into ours; both run in eval mode, float32, on the CPU,
on random images in [0, 1] at the model's image size (two per batch for S, one for M). Their anomaly maps, image
scores and un-normalised maps (the ones the quantiles are computed from) must agree to
float32 rounding: ``rtol=1e-4`` and ``atol`` = 5e-5 of the map's largest value. Measured worst
case: 5e-6 of the largest value, 1.4e-5 for medium padded, where the random networks' maps are
nearly flat and the quantile normalisation ``0.1 (m - qa) / (qb - qa)`` magnifies rounding
about tenfold (ours runs fused kernels, channels-last, in another summation order). A real
mismatch is far larger: the 4-pixel border of difference 2 changes maps by > 1e-2 of their
largest value.

Intended differences, and how each is compared:

1. Input normalisation: anomalib ImageNet-normalises the image inside each of its three
   networks, we once before them. Same arithmetic; compared directly.
2. ``pad_maps``: anomalib adds a 4-pixel zero border to the maps whenever ``pad_maps`` is
   True (its default), even for padded PDNs whose 64x64 maps are already aligned with the
   image; we add it only for unpadded PDNs. So: unpadded vs anomalib's ``pad_maps=True``,
   padded vs ``pad_maps=False``, both directly; and anomalib's ``padding=True,
   pad_maps=True`` against our fused ``anomaly_maps`` op with that 4-pixel border applied
   (``pad=4``) to our padded model's features: the documented difference, exactly.
3. The zero border is part of the maps both implementations normalise and take quantiles
   of (``get_maps(normalize=False)`` vs our ``raw_maps``): compared directly.
4. Image size: anomalib's torch model returns maps at the size of the batch it is given (its
   pre-processor resized the image before); ours resizes to ``config.image_size`` itself
   and returns maps at the input's size. With input size == image size neither resizes;
   that is what is compared (256x256, and 320x256 for a non-square case).
5. Score shape: anomalib ``pred_score`` is [B, 1], ours [B]; compared after ``squeeze(1)``.
6. Unset statistics: anomalib skips standardisation / map normalisation while ``mean_std`` /
   ``quantiles`` are all zeros; the converter turns that into mean 0, std 1 and identity
   quantiles, so a fresh anomalib model is compared directly too.
7. Not compared: anomalib's map quantiles come from ``torch.quantile`` over at most 2^24
   randomly subsampled values, ours are exact (training-time, not inference); on CUDA our
   ``infer`` may compute in bfloat16 by default (these tests run on the CPU in float32).
"""

from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch

from efficientad_ext import ops
from efficientad_ext.formats.anomalib import from_anomalib_state_dict, to_anomalib_state_dict

ANOMALIB_MODULE = "anomalib.models.image.efficient_ad.torch_model"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # anomalib's own deprecation warnings on import
    if os.environ.get("EFFICIENTAD_REQUIRE_ANOMALIB") == "1":  # CI: fail rather than skip
        torch_model = importlib.import_module(ANOMALIB_MODULE)
    else:
        torch_model = pytest.importorskip(
            ANOMALIB_MODULE,
            reason="anomalib (2.7.0) is not installed: pip install --no-deps -r .ci/peers-requirements.txt",
        )

RTOL = 1e-4
ATOL_OF_MAX = 5e-5
BATCH = 2  # medium runs one image: its PDNs cost ~4x small's on the CPU (batching is arch-independent)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 rounding: ``rtol`` 1e-4, ``atol`` 5e-5 of the largest expected value (the maps'
    scale differs by orders of magnitude between raw and normalised maps; normalised values
    cross zero, where only an absolute tolerance means anything)."""
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL_OF_MAX * float(expected.abs().max()))


def anomalib_model(arch: str, padded: bool, pad_maps: bool, set_mean_std: bool = True):
    """anomalib's model with its own seeded random initialisation, ``mean_std`` optionally set."""
    torch.manual_seed(1234)
    size = torch_model.EfficientAdModelSize(arch)
    model = torch_model.EfficientAdModel(teacher_out_channels=384, model_size=size, padding=padded, pad_maps=pad_maps)
    if set_mean_std:
        with torch.no_grad():
            model.mean_std["mean"].normal_(0.0, 0.01)
            model.mean_std["std"].uniform_(0.02, 0.04)  # about the random teacher's own spread
    return model.eval()


def calibrate(theirs, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets anomalib's quantiles as its training does (0.9 / 0.995 of the un-normalised maps,
    here of ``images``); returns those maps."""
    map_st, map_ae = theirs.get_maps(images, normalize=False)
    for name, m in (("st", map_st), ("ae", map_ae)):
        theirs.quantiles[f"qa_{name}"].fill_(float(torch.quantile(m.flatten(), 0.9)))
        theirs.quantiles[f"qb_{name}"].fill_(float(torch.quantile(m.flatten(), 0.995)))
    return map_st, map_ae


def compare(theirs, ours, images: torch.Tensor) -> None:
    expected = theirs(images)
    got = ours.infer(images)
    assert got.anomaly_map.shape == expected.anomaly_map.shape == (images.shape[0], 1, *images.shape[-2:])
    # The maps vary across each image (and between images), so agreement is not a fluke.
    maps = expected.anomaly_map.flatten(1)
    assert bool(((maps.amax(1) - maps.amin(1)) > 0.01 * maps.abs().amax(1)).all())
    if maps.shape[0] > 1:
        assert float((maps[0] - maps[1]).abs().max()) > 0.01 * float(maps.abs().max())
    assert_close(got.anomaly_map, expected.anomaly_map)
    assert_close(got.score, expected.pred_score.squeeze(1))


@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("padded", [False, True])
def test_same_maps_and_scores(arch, padded):
    # pad_maps=True for unpadded PDNs (anomalib's default), False for padded (difference 2).
    theirs = anomalib_model(arch, padded, pad_maps=not padded)
    images = torch.rand(BATCH if arch == "small" else 1, 3, 256, 256)
    with torch.no_grad():
        their_st, their_ae = calibrate(theirs, images)
        ours = from_anomalib_state_dict(theirs.state_dict(), padded=padded)
        # ours -> anomalib gives back exactly the tensors anomalib started from.
        state = theirs.state_dict()
        back = to_anomalib_state_dict(ours)
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
        compare(theirs, ours, images)
        # Difference 3: the un-normalised maps, zero border included, that quantiles come from.
        our_st, our_ae = ours.raw_maps(ours.prepare(images)[0])
        assert_close(our_st, their_st)
        assert_close(our_ae, their_ae)


def test_anomalib_pad_maps_on_padded_pdn_is_a_4_pixel_border():
    # Difference 2: anomalib(padding=True, pad_maps=True) == our padded features + a 4-px border.
    theirs = anomalib_model("small", padded=True, pad_maps=True)
    images = torch.rand(BATCH, 3, 256, 256)
    with torch.no_grad():
        calibrate(theirs, images)
        ours = from_anomalib_state_dict(theirs.state_dict(), padded=True)
        expected = theirs(images)
        x = ours.prepare(images)[0]
        out = ops.anomaly_maps(
            ours.teacher.fused_forward(x),
            ours.teacher_mean,
            ours.teacher_std,
            ours.student.fused_forward(x),
            ours.autoencoder(x, ours.feature_size),
            ours.quantiles,
            (256, 256),
            4,
        )
        assert_close(out.anomaly_map, expected.anomaly_map)
        assert_close(out.score, expected.pred_score.squeeze(1))
        # ... and differs from our padded model's (aligned) maps by far more than rounding.
        aligned = ours.infer(images).anomaly_map
        assert float((aligned - expected.anomaly_map).abs().max()) > 1e-2 * float(expected.anomaly_map.abs().max())


def test_non_square_image():
    theirs = anomalib_model("small", padded=False, pad_maps=True)
    images = torch.rand(BATCH, 3, 320, 256)
    with torch.no_grad():
        calibrate(theirs, images)
        ours = from_anomalib_state_dict(theirs.state_dict(), padded=False, image_size=(320, 256))
        compare(theirs, ours, images)


def test_unset_statistics():
    # Difference 6: a fresh anomalib model (mean_std and quantiles all zero) is reproduced.
    theirs = anomalib_model("small", padded=False, pad_maps=True, set_mean_std=False)
    ours = from_anomalib_state_dict(theirs.state_dict())
    assert not ours.calibrated
    with torch.no_grad():
        compare(theirs, ours, torch.rand(BATCH, 3, 256, 256))
