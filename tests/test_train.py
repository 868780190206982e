"""Training (Algorithm 1): losses, statistics, quantiles, checkpoints, exact resume, errors."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import efficientad_ext
from efficientad_ext import EfficientAD, load_model, ops
from efficientad_ext.data.image_source import ImageSource, split_validation
from efficientad_ext.training import TrainConfig, TrainStep, teacher_channel_stats, train
from efficientad_ext.training.augment import color_jitter_one_of, penalty_transform


def write_images(folder, n, size=(256, 256), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@contextlib.contextmanager
def interrupt_training_after(steps: int):
    """Runs the block with a KeyboardInterrupt raised instead of training step ``steps + 1``
    (as a Ctrl-C there would), and expects it to propagate out of the block."""
    import efficientad_ext.training as tr

    original = tr.TrainStep.__call__
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        if calls["n"] == steps:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    tr.TrainStep.__call__ = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        tr.TrainStep.__call__ = original


def test_config_schedule_and_reduction():
    cfg = TrainConfig(steps=100)
    assert cfg.lr_at(94) == pytest.approx(1e-4) and cfg.lr_at(95) == pytest.approx(1e-5)
    assert TrainConfig().steps == 70_000 and TrainConfig().p_hard == 0.999
    assert cfg.reduction == "batch" and TrainConfig(batch_size=4).reduction == "per_sample"
    assert TrainConfig(batch_size=4, hard_reduction="batch").reduction == "batch"
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainConfig(validation_fraction=1.0)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(30)]
    tr, val = split_validation(paths, 0.1, seed=3)
    assert len(val) == 3 and not set(tr) & set(val) and len(tr) + len(val) == 30
    assert split_validation(paths, 0.1, seed=3) == (tr, val)
    with pytest.raises(ValueError, match="at least 2 training images"):
        split_validation(paths[:1], 0.1, 0)


def test_teacher_stats_streaming_equals_direct(tmp_path):
    paths = write_images(tmp_path / "imgs", 5)
    model = EfficientAD().eval()
    source = ImageSource(paths, (256, 256), max_bytes=2**30)
    mean, std = teacher_channel_stats(model, source, batch_size=2)
    x = model.normalize(torch.stack([source.get([i])[0] for i in range(5)]).float() / 255)
    with torch.no_grad():
        t = model.teacher(x).double()
    torch.testing.assert_close(mean, t.mean(dim=(0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, t.std(dim=(0, 2, 3), unbiased=False).float(), rtol=1e-4, atol=1e-6)


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    y = color_jitter_one_of(x, g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    p = penalty_transform(torch.rand(2, 3, 100, 80), (64, 48), g, p_gray=1.0)
    assert p.shape == (2, 3, 64, 48)
    torch.testing.assert_close(p[:, 0], p[:, 1])  # grayscale with p = 1


def test_train_step_matches_algorithm_1_by_hand():
    """One step's losses equal the paper's formulas computed directly."""
    torch.manual_seed(0)
    model = EfficientAD().eval()
    cfg = TrainConfig(steps=10)
    step = TrainStep(model, cfg, torch.Generator().manual_seed(1))
    images, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    model.autoencoder.eval()  # no dropout: deterministic to recompute
    g_state = step.generator.get_state()
    with torch.no_grad():
        aug = color_jitter_one_of(images, torch.Generator().manual_seed(0).set_state(g_state))
        x, xa, p = model.normalize(images), model.normalize(aug), model.normalize(penalty)
        t = (model.teacher(x) - model.teacher_mean.view(1, -1, 1, 1)) / model.teacher_std.view(1, -1, 1, 1)
        ta = (model.teacher(xa) - model.teacher_mean.view(1, -1, 1, 1)) / model.teacher_std.view(1, -1, 1, 1)
        s, sa, sp = model.student(x), model.student(xa), model.student(p)
        a = model.autoencoder(xa, model.feature_size)
        d = (t - s[:, :384]) ** 2
        hard = d[d >= torch.quantile(d.flatten(), 0.999)].mean()
        expected = {
            "hard": hard,
            "penalty": (sp[:, :384] ** 2).mean(),
            "ae": ((ta - a) ** 2).mean(),
            "stae": ((a - sa[:, 384:]) ** 2).mean(),
        }
    got = step(0, images, penalty)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v.item(), rel=1e-4), k
    assert got["loss"] == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-4)


@pytest.mark.slow
def test_train_writes_calibrated_model_and_resume_is_exact(tmp_path):
    paths = write_images(tmp_path / "train", 6)
    penalty_dir = tmp_path / "penalty"
    write_images(penalty_dir, 3, size=(300, 280), seed=1)
    cfg = TrainConfig(steps=2, checkpoint_every=1, seed=5, penalty_dir=str(penalty_dir), validation_fraction=0.34)
    straight = train(paths, tmp_path / "a", config=cfg)
    assert straight.calibrated and (tmp_path / "a" / "model.safetensors").is_file()
    q = straight.quantiles
    assert q[0] < q[1] and q[2] < q[3]
    # Quantiles are exactly those of the validation maps.
    _, val = split_validation(paths, 0.34, 5)
    source = ImageSource(val, (256, 256), 2**30)
    st, ae = straight.raw_maps(straight.normalize(source.get(range(len(val))).float() / 255))
    torch.testing.assert_close(q[:2], ops.quantile(st, [0.9, 0.995]))
    # Interrupted after 1 step, resumed to 2: identical weights.
    half = tmp_path / "c"
    with interrupt_training_after(1):
        train(paths, half, config=cfg)
    assert (half / "train_state.safetensors").is_file() and not (half / "model.safetensors").exists()
    resumed = train(paths, half, config=cfg, resume=True)
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.quantiles, straight.quantiles)
    assert load_model(half / "model.safetensors").calibrated


def test_stop_at_keeps_the_schedule_and_a_resume_finishes_it_exactly(tmp_path, caplog):
    paths = write_images(tmp_path / "train", 5)
    # lr drops after step 2 of 4 (lr_drop_at 0.5), so a stop at 2 that restarted the schedule
    # (a 2-step run, lr dropping after step 1) would train differently.
    base = dict(steps=4, checkpoint_every=3, seed=4, validation_fraction=0.4, lr_drop_at=0.5)
    straight = train(paths, tmp_path / "a", config=TrainConfig(**base))
    stopped = train(paths, tmp_path / "b", config=TrainConfig(**base, stop_at=2))
    assert stopped.calibrated and stopped.record.steps == 2 and stopped.record.extra["schedule_steps"] == 4
    assert load_model(tmp_path / "b" / "model.safetensors").record.steps == 2
    # A state at the stop (not a multiple of checkpoint_every): the resume loses no step.
    resumed = train(paths, tmp_path / "b", config=TrainConfig(**base), resume=True)
    assert resumed.record.steps == 4 and resumed.record.extra["steps_this_run"] == 2
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.quantiles, straight.quantiles)
    # A time limit already spent stops before the first step; the run still finishes.
    with caplog.at_level("WARNING", logger="efficientad_ext.train"):
        early = train(paths, tmp_path / "c", config=TrainConfig(**base, time_limit_s=1e-9))
    assert early.record.steps == 0 and "time limit" in caplog.text
    for bad, match in (
        (dict(stop_at=0), "stop_at"),
        (dict(stop_at=5), "stop_at"),
        (dict(time_limit_s=0), "time_limit"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**base, **bad)


def test_cli_train_stop_at_and_time_limit_reach_the_config():
    import argparse

    from efficientad_ext.cli.options import add_train_args, train_config

    p = argparse.ArgumentParser()
    add_train_args(p)
    cfg = train_config(p.parse_args(["--stop-at", "4000", "--time-limit", "1.5"]))
    assert cfg.stop_at == 4000 and cfg.time_limit_s == 90.0 and cfg.steps == 70_000
    cfg = train_config(p.parse_args([]))
    assert cfg.stop_at is None and cfg.time_limit_s is None


def test_train_errors(tmp_path):
    # Unreadable images are named; with skip_corrupt they are dropped (with a logged warning).
    with pytest.raises(ValueError, match="training set is empty"):
        train([], tmp_path / "out", config=TrainConfig(steps=1))
    paths = write_images(tmp_path / "imgs", 2)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(paths, tmp_path / "out", config=TrainConfig(steps=1), resume=True)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not an image")
    from efficientad_ext.data import ImageError

    with pytest.raises(ImageError, match="bad.png"):
        ImageSource([*paths, bad], (256, 256), 2**30)
    source = ImageSource([*paths, bad], (256, 256), 2**30, skip_corrupt=True)
    assert len(source) == 2 and bad not in source.paths


def test_batch_of_two_uses_per_sample_thresholds(monkeypatch):
    """Batches larger than 1 work (the peers refuse them) and threshold each image separately."""
    seen = []
    original = ops.hard_feature_loss

    def spy(teacher, student, p=0.999, reduction="batch"):
        seen.append((teacher.shape[0], reduction))
        return original(teacher, student, p, reduction)

    monkeypatch.setattr(efficientad_ext.ops, "hard_feature_loss", spy)
    model = EfficientAD()
    step = TrainStep(model, TrainConfig(steps=5, batch_size=2), torch.Generator().manual_seed(0))
    losses = step(0, torch.rand(2, 3, 256, 256), torch.rand(2, 3, 256, 256))
    assert seen == [(2, "per_sample")] and all(np.isfinite(v) for v in losses.values())


def _labelled_samples(tmp_path):
    from efficientad_ext.data import Sample

    good = write_images(tmp_path / "test_good", 2, seed=7)
    bad = write_images(tmp_path / "test_bad", 2, seed=8)
    masks = []
    for i in range(len(bad)):
        m = np.zeros((256, 256), np.uint8)
        m[40 + 30 * i : 120, 60:140] = 255
        mp = tmp_path / f"mask{i}.png"
        Image.fromarray(m).save(mp)
        masks.append(mp)
    return [Sample(p, 0, "good") for p in good] + [Sample(p, 1, "scratch", mp) for p, mp in zip(bad, masks)]


def test_learning_curve_does_not_change_training_and_resumes(tmp_path):
    import json

    from efficientad_ext.training.learning_curve import eval_steps

    assert eval_steps(10, 4, (1, 3, 99)) == [1, 3, 4, 8]
    with pytest.raises(ValueError, match="eval_at"):
        eval_steps(10, 0, (0,))
    paths = write_images(tmp_path / "train", 6)
    samples = _labelled_samples(tmp_path)
    base = dict(steps=3, checkpoint_every=1, seed=2, validation_fraction=0.34)
    plain = train(paths, tmp_path / "plain", config=TrainConfig(**base))
    cfg = TrainConfig(**base, eval_at=(1, 3), eval_keep_models=True)
    curved = train(paths, tmp_path / "curve", config=cfg, curve_samples=samples)
    # Evaluating in the middle draws no random numbers and restores training mode: same weights.
    for a, b in zip(plain.student.state_dict().values(), curved.student.state_dict().values()):
        assert torch.equal(a, b)
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [1, 3]
    try:
        import matplotlib  # noqa: F401  (the plot extra; CI's test extra installs it)
    except ImportError:
        assert not (tmp_path / "curve" / "curve.png").exists()
    else:
        assert (tmp_path / "curve" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in curve["points"]:
        assert 0.0 <= p["image_auroc"] <= 1.0 and 0.0 <= p["au_pro"] <= 1.0 and "scratch" in p["image_auroc_per_type"]
    # The last point's model is the final model, calibrated on the hold-out.
    last = load_model(tmp_path / "curve" / "curve_models" / "model_step000003.safetensors")
    torch.testing.assert_close(last.quantiles, curved.quantiles)
    # Resuming from step 2 keeps the points up to 2 and recomputes step 3.
    with interrupt_training_after(2):
        train(paths, tmp_path / "half", config=cfg, curve_samples=samples)
    assert [p["step"] for p in json.loads((tmp_path / "half" / "curve.json").read_text())["points"]] == [1]
    train(paths, tmp_path / "half", config=cfg, curve_samples=samples, resume=True)
    resumed = json.loads((tmp_path / "half" / "curve.json").read_text())["points"]
    assert [p["step"] for p in resumed] == [1, 3]
    assert resumed[1]["image_auroc"] == curve["points"][1]["image_auroc"]
    with pytest.raises(ValueError, match="validation images"):
        train(
            paths,
            tmp_path / "noval",
            config=TrainConfig(steps=1, validation_fraction=0.0, eval_at=(1,)),
            curve_samples=samples,
        )


def test_penalty_images_are_resized_once_from_the_original(tmp_path):
    from efficientad_ext.data import load_image, resize_image
    from efficientad_ext.training import penalty_batch

    paths = write_images(tmp_path / "pen", 2, size=(300, 280), seed=3)
    p = penalty_batch(paths, (64, 48), torch.Generator().manual_seed(0))
    # The paper's recipe on the original: Resize(2 * size) -> (grayscale) -> CenterCrop(size).
    g = torch.Generator().manual_seed(0)
    expected = penalty_transform(torch.stack([resize_image(load_image(q), (128, 96)) for q in paths]), (64, 48), g)
    torch.testing.assert_close(p, expected, rtol=0, atol=0)
    direct = resize_image(load_image(paths[0]), (128, 96))[:, 32:96, 24:72]
    via_small = F.interpolate(
        resize_image(load_image(paths[0]), (64, 48))[None], size=(128, 96), mode="bilinear", align_corners=False
    )[0, :, 32:96, 24:72]
    gray = bool((p[0, 0] == p[0, 1]).all())
    if not gray:
        torch.testing.assert_close(p[0], direct)
    assert not torch.allclose(direct, via_small, atol=1e-3)  # the old double resize differs


def test_skip_corrupt_drops_bad_and_tiny_files_before_the_split(tmp_path):
    """A corrupt file or a 1x1 image never empties the validation hold-out, whichever split a
    seed would have put it in; without skip_corrupt the run stops before its first step."""
    from efficientad_ext.data import ImageError

    good = write_images(tmp_path / "imgs", 4)
    bad = tmp_path / "imgs" / "bad.png"
    bad.write_bytes(b"not an image")
    tiny = tmp_path / "imgs" / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    paths = [*good, bad, tiny]
    for seed in range(3):  # the seeded hold-out of 3 of 6 files takes a bad one for some seed
        cfg = TrainConfig(steps=1, validation_fraction=0.5, seed=seed, skip_corrupt=True)
        model = train(paths, tmp_path / f"out{seed}", config=cfg)
        assert model.calibrated
        assert model.record.extra["train_images"] + model.record.extra["validation_images"] == 4
    for path, what in ((bad, "bad.png"), (tiny, "tiny.png: 1x1 pixels is below the 33x33 minimum")):
        with pytest.raises(ImageError, match=what):
            train([*good, path], tmp_path / "strict", config=TrainConfig(steps=1, validation_fraction=0.5))
        assert not (tmp_path / "strict" / "train_state.safetensors").exists()
    with pytest.raises(ValueError, match="none of the 2 validation images is usable"):
        train(good, tmp_path / "novalid", config=TrainConfig(steps=1, skip_corrupt=True), validation_images=[bad, tiny])
