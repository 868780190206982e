"""Training in lock-step with anomalib 2.7.0's loop (``benchmarks/lockstep_anomalib.py``): the
same initial weights, images, penalty images, augmentation draws and dropout masks; our
:class:`TrainStep` and anomalib's ``EfficientAdModel`` losses + Adam must give the same loss
terms and weights, step after step, to float32 rounding. Skipped without anomalib (CI installs
it for its peers step, with ``EFFICIENTAD_REQUIRE_ANOMALIB=1`` making it fail instead).

Tolerances, and why:
- loss terms: relative 1e-4. The two compute the same sums in another order (our fused ops,
  concatenated batches, channels-last kernels); measured <= 2e-5 over 300 real steps.
- weights: ``||ours - theirs|| / ||theirs - initial||`` <= 1e-3, i.e. the two runs are apart
  by at most 0.1% of how far training moved them. An elementwise bound would not do: Adam
  divides each gradient by its running RMS, so a weight whose gradient is near Adam's eps
  (1e-8) moves by up to lr on rounding noise alone (seen as 5e-5 of the largest weight after
  one step). Measured 1e-5; a wrong augmentation factor (the negative control) gives > 0.1.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if os.environ.get("EFFICIENTAD_REQUIRE_ANOMALIB") != "1":
        pytest.importorskip(
            "anomalib.models.image.efficient_ad.torch_model",
            reason="anomalib (2.7.0) is not installed: pip install --no-deps -r .ci/peers-requirements.txt",
        )
        pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lockstep_anomalib.py"
LOSS_RTOL = 1e-4
APART_OVER_MOVED = 1e-3
STEPS = 3


def _lockstep_module():
    spec = importlib.util.spec_from_file_location("lockstep_anomalib", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(factor_offset: float = 0.0, teacher_cache: bool = False) -> list[tuple[dict, dict]]:
    lockstep = _lockstep_module()
    g = torch.Generator().manual_seed(5)
    train_images = torch.rand(4, 3, 256, 256, generator=g)
    penalties = torch.rand(STEPS, 1, 3, 256, 256, generator=g)
    run = lockstep.LockStep(None, train_images, steps=STEPS, seed=0)
    out = []
    for s in range(STEPS):
        kind, factor = s % 3, 0.85 + 0.1 * s
        terms = run.step(
            s,
            train_images[s % 4][None],
            penalties[s],
            kind,
            factor,
            dropout_seed=100 + s,
            teacher_cache=teacher_cache,
            ours_factor_offset=factor_offset,
        )
        out.append((terms, run.weight_differences()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("teacher_cache", [False, True], ids=["teacher_runs", "teacher_cached"])
def test_training_steps_equal_anomalib(teacher_cache):
    for terms, weights in _run(teacher_cache=teacher_cache):
        for key in ("st", "ae", "stae"):
            assert terms["ours"][key] == pytest.approx(terms["theirs"][key], rel=LOSS_RTOL), key
        assert weights["student_update"] <= APART_OVER_MOVED
        assert weights["ae_update"] <= APART_OVER_MOVED


@pytest.mark.slow
def test_lockstep_detects_a_different_augmentation():
    """The comparison can fail: our autoencoder branch augmented with a factor 0.05 off."""
    results = _run(factor_offset=0.05)
    assert any(abs(t["ours"]["ae"] - t["theirs"]["ae"]) > LOSS_RTOL * abs(t["theirs"]["ae"]) for t, _ in results)
    assert results[-1][1]["ae_update"] > APART_OVER_MOVED
