"""``benchmarks/anomalib_curve.py train`` is the accuracy anchor's loop made resumable: with the
same seed and ``--schedule-steps N --stop-at N`` it must train exactly the model that
``../shared/tools/anomalib_train_loop.py`` trains with ``STEPS=N`` (every tensor equal, bit for
bit: the same statements in the same order of random draws, in one process), and a run stopped
and resumed must end where an uninterrupted one does. Skipped without anomalib or without the
tool (CI installs anomalib for its peers step, where ``EFFICIENTAD_REQUIRE_ANOMALIB=1`` makes
the missing package an error).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if os.environ.get("EFFICIENTAD_REQUIRE_ANOMALIB") != "1":
        pytest.importorskip(
            "anomalib.models.image.efficient_ad.torch_model",
            reason="anomalib (2.7.0) is not installed: pip install --no-deps -r .ci/peers-requirements.txt",
        )
    pytest.importorskip("sklearn")  # the tool scores with scikit-learn
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize

from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "anomalib_curve.py"
TOOL = Path(os.environ.get("ANOMALIB_TRAIN_LOOP", ROOT.parent / "shared" / "tools" / "anomalib_train_loop.py"))
if not TOOL.is_file():
    pytest.skip(f"the anomalib training tool is not at {TOOL} (set ANOMALIB_TRAIN_LOOP)", allow_module_level=True)

STEPS = 3
SEED = 7


def _module():
    spec = importlib.util.spec_from_file_location("anomalib_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small MVTec-layout set (odd sizes: the loop resizes to 256), penalty JPEGs and a random
    PDN-S teacher in our safetensors keys."""
    root = tmp_path_factory.mktemp("curve")
    rng = np.random.default_rng(3)
    for folder, n in (("train/good", 11), ("test/good", 2), ("test/crack", 2)):
        (root / "set" / folder).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "set" / folder / f"{i:03d}.png")
    (root / "penalty").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(root / "penalty" / f"p{i}.JPEG")
    torch.manual_seed(0)
    teacher = EfficientAdModel(model_size=EfficientAdModelSize.S).teacher.state_dict()
    ours = {f"{i}.{p}": teacher[f"conv{n + 1}.{p}"] for n, i in enumerate((0, 3, 6, 8)) for p in ("weight", "bias")}
    save_file({k: v.contiguous() for k, v in ours.items()}, str(root / "teacher.safetensors"))
    return root / "set", root / "penalty", root / "teacher.safetensors"


def _tool_model(inputs) -> dict:
    dataset, penalty, teacher = inputs
    argv, seed = sys.argv, os.environ.get("SEED")
    sys.argv = [str(TOOL), str(dataset), str(penalty), str(STEPS), str(teacher)]
    os.environ["SEED"] = str(SEED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return runpy.run_path(str(TOOL), run_name="__main__")["m"].state_dict()
    finally:
        sys.argv = argv
        os.environ.pop("SEED") if seed is None else os.environ.__setitem__("SEED", seed)


def _curve(inputs, out: Path, *extra: str) -> dict:
    """``anomalib_curve.py train ...`` through its ``main``, keeping what ``train`` returns."""
    dataset, penalty, teacher = inputs
    module = _module()
    captured = {}
    original = module.train

    def keep(ns):
        captured.update(original(ns))
        return captured

    module.train = keep
    module.main(
        ["train", str(dataset), str(penalty), str(teacher), "--out", str(out), "--seed", str(SEED)]
        + ["--schedule-steps", str(STEPS), "--log-every", "1", *extra]
    )
    return captured


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_curve_loop_trains_the_tools_model(inputs, tmp_path):
    theirs = _tool_model(inputs)
    ours = _curve(inputs, tmp_path / "run", "--stop-at", str(STEPS))
    assert ours["step"] == STEPS
    _assert_same(ours["model"].state_dict(), theirs)


@pytest.mark.slow
def test_curve_resumes_to_the_uninterrupted_weights_and_points_change_nothing(inputs, tmp_path):
    whole = _curve(inputs, tmp_path / "whole", "--stop-at", str(STEPS))
    first = _curve(inputs, tmp_path / "split", "--stop-at", "2", "--eval-at", "1,2", "--checkpoint-every", "5")
    assert first["step"] == 2 and [p["step"] for p in first["points"]] == [1, 2]
    rest = _curve(inputs, tmp_path / "split", "--stop-at", str(STEPS), "--resume")
    assert rest["step"] == STEPS
    _assert_same(rest["model"].state_dict(), whole["model"].state_dict())
    point = torch.load(tmp_path / "split" / "points" / "step_000002.pt", weights_only=False)
    assert set(point["quantiles"]) == {"qa_st", "qb_st", "qa_ae", "qb_ae"}
    assert point["quantiles"]["qa_st"] < point["quantiles"]["qb_st"]


def test_curve_refuses_a_resume_with_other_settings(inputs, tmp_path):
    _curve(inputs, tmp_path / "run", "--stop-at", "1")
    with pytest.raises(SystemExit, match="other settings"):
        _curve(inputs, tmp_path / "run", "--stop-at", "2", "--resume", "--seed", str(SEED + 1))
    with pytest.raises(SystemExit, match="add --resume"):
        _curve(inputs, tmp_path / "run", "--stop-at", "2")


@pytest.mark.slow
def test_side_by_side_branches_scores_the_tools_model_in_our_python(inputs):
    """``side_by_side.py --branches``: the tool's model saved by ``anomalib_loop_branches.py`` in
    anomalib's Python, scored per branch by our evaluator in this one."""
    pytest.importorskip("efficientad_ext")
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "benchmarks" / "side_by_side.py")
    side_by_side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side_by_side)
    dataset, penalty, teacher = inputs
    env = os.environ.get("ANOMALIB_TRAIN_LOOP")
    os.environ["ANOMALIB_TRAIN_LOOP"] = str(TOOL)
    try:
        r = side_by_side.run_anomalib(sys.executable, dataset, penalty, 2, SEED, teacher, 1, branches=True)
    finally:
        os.environ.pop("ANOMALIB_TRAIN_LOOP") if env is None else os.environ.__setitem__("ANOMALIB_TRAIN_LOOP", env)
    assert set(r["branches"]) == {"local", "global", "combined"}
    assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["our_eval_image_auroc"] <= 1.0
    assert r["branches"]["combined"]["image_auroc"] == pytest.approx(r["our_eval_image_auroc"])
