"""Training's fast paths against the plain step (issue 12): each gives the float32 step's
losses and gradients within its own tolerance.

- the student's last layer computing only the channels Algorithm 1 reads (PDN heads);
- the cached teacher outputs on the training images (TeacherCache);
- bf16 autocast (float32 master weights, float32 losses; where the CPU lacks native bf16,
  the portable emulation runs the same logic);
- channels-last weights and batches (alone and with bf16).
"""

from __future__ import annotations

import pytest
import torch

import efficientad_ext
from efficientad_ext import EfficientAD, ModelConfig, ops
from efficientad_ext.models.pdn import PDN
from efficientad_ext.training import TeacherCache, TrainConfig, TrainStep
from efficientad_ext.training.augment import color_jitter_one_of


@pytest.mark.parametrize("arch, padded", [("small", False), ("small", True), ("medium", False)])
def test_pdn_heads_equal_the_full_last_layer_and_its_gradients(arch, padded):
    torch.manual_seed(0)
    net = PDN(arch, out_channels=10, padded=padded).double()
    x = torch.randn(5, 3, 37, 41, dtype=torch.float64)
    heads = ((2, 0, 5), (1, 5, 10), (2, 3, 8))
    parts = net(x, heads=heads)
    full = net(x)
    assert [p.shape[1] for p in parts] == [5, 5, 5]
    torch.testing.assert_close(parts[0], full[:2, :5], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts[1], full[2:3, 5:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts[2], full[3:, 3:8], rtol=1e-12, atol=1e-12)
    # Gradients of a loss on the parts equal those of the same loss on the full output.
    weights = [torch.randn_like(p) for p in parts]
    grads_parts = torch.autograd.grad(sum((w * p).sum() for w, p in zip(weights, parts)), list(net.parameters()))
    full = net(x)
    loss_full = (
        (weights[0] * full[:2, :5]).sum() + (weights[1] * full[2:3, 5:]).sum() + (weights[2] * full[3:, 3:8]).sum()
    )
    grads_full = torch.autograd.grad(loss_full, list(net.parameters()))
    for a, b in zip(grads_parts, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_pdn_heads_must_cover_the_batch():
    net = PDN("small", out_channels=4)
    with pytest.raises(ValueError, match="heads cover 3 images, the batch has 2"):
        net(torch.randn(2, 3, 33, 33), heads=((3, 0, 4),))


def _plain_step_losses(model: EfficientAD, images, penalty, generator_state, p_hard=0.999):
    """Algorithm 1's losses with every network run in full (no fast path), in float32."""
    c = model.config.teacher_channels
    aug = color_jitter_one_of(images, torch.Generator().set_state(generator_state))
    x, xa, p = model.normalize(images), model.normalize(aug), model.normalize(penalty)
    mean, std = model.teacher_mean.view(1, -1, 1, 1), model.teacher_std.view(1, -1, 1, 1)
    with torch.no_grad():
        t, ta = (model.teacher(x) - mean) / std, (model.teacher(xa) - mean) / std
    s, sa, sp = model.student(x), model.student(xa), model.student(p)
    a = model.autoencoder(xa, model.feature_size)
    d = (t - s[:, :c]) ** 2
    hard = d[d >= torch.quantile(d.flatten(), p_hard)].mean()
    return {
        "hard": hard,
        "penalty": (sp[:, :c] ** 2).mean(),
        "ae": ((ta - a) ** 2).mean(),
        "stae": ((a - sa[:, c:]) ** 2).mean(),
    }


def _grads(model):
    return [p.grad.clone() for p in [*model.student.parameters(), *model.autoencoder.parameters()]]


def _setup(seed=0):
    torch.manual_seed(seed)
    model = EfficientAD(ModelConfig())
    model.autoencoder.eval()  # no dropout, so both sides compute the same function
    with torch.no_grad():  # teacher statistics of a plausible scale
        model.teacher_mean.uniform_(-0.5, 0.5)
        model.teacher_std.uniform_(0.5, 2.0)
    images, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    return model, images, penalty


def _step_and_reference(model, images, penalty, precision="float32", cached=False, memory_format="contiguous"):
    """(fast step's losses and gradients, plain step's losses and gradients) from the same state;
    the plain step runs first, on the model's contiguous weights."""
    cfg = TrainConfig(steps=10)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    model.student.zero_grad(set_to_none=True)
    model.autoencoder.zero_grad(set_to_none=True)
    expected = _plain_step_losses(model, images, penalty, state)
    sum(expected.values()).backward()
    ref_grads = _grads(model)
    model.student.zero_grad(set_to_none=True)
    model.autoencoder.zero_grad(set_to_none=True)
    step = TrainStep(model, cfg, generator, precision, memory_format)
    # The step's optimizer update is replaced by a no-op so the gradients can be read.
    step.optimizer.step = lambda: None
    teacher_images = None
    if cached:
        cache = TeacherCache(model, 1)
        with torch.no_grad():
            cache.outputs[0] = model.teacher.fused_forward(model.normalize(images))[0].float()
        teacher_images = cache[[0]]
    got = step(0, images, penalty, teacher_images=teacher_images)
    return got, _grads(model), {k: v.item() for k, v in expected.items()}, ref_grads


@pytest.mark.parametrize(
    "cached, memory_format", [(False, "contiguous"), (True, "contiguous"), (True, "channels_last")]
)
def test_float32_fast_step_equals_the_plain_step(cached, memory_format):
    model, images, penalty = _setup()
    got, grads, expected, ref_grads = _step_and_reference(
        model, images, penalty, cached=cached, memory_format=memory_format
    )
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    assert all(p.is_contiguous(memory_format=layout) for p in model.student.parameters() if p.dim() == 4)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-7), k
    for a, b in zip(grads, ref_grads):
        if memory_format == "contiguous":  # the plain step's kernels: elementwise agreement
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6 * b.abs().max().item() + 1e-9)
        else:  # other kernels, another summation order: tiny gradients differ elementwise (up to
            # 25% of a 2e-7 value, measured), so the bound is on each gradient's norm and maximum
            # (measured 4.6e-5 of the norm on both layouts, AMX Xeon).
            assert (a - b).norm() <= 2e-4 * b.norm() + 1e-12
            assert (a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-12


def test_teacher_cache_holds_the_statistics_pass_outputs(tmp_path):
    from efficientad_ext.data.image_source import ImageSource
    from efficientad_ext.training import teacher_channel_stats
    from test_train import write_images

    torch.manual_seed(0)
    model = EfficientAD(ModelConfig())
    source = ImageSource(write_images(tmp_path, 3), (256, 256), 2**30)
    cache = TeacherCache(model, len(source))
    assert TeacherCache.bytes_needed(model, 3) == 3 * 384 * 56 * 56 * 4
    mean, std = teacher_channel_stats(model, source, batch_size=2, keep=cache.outputs)
    with torch.no_grad():
        direct = model.teacher(model.normalize(source.get([2, 0]).float() / 255))
    torch.testing.assert_close(cache[[2, 0]], direct, rtol=1e-4, atol=1e-4)
    # Caching does not change the statistics.
    mean_plain, std_plain = teacher_channel_stats(model, source, batch_size=3)
    torch.testing.assert_close(mean, mean_plain)
    torch.testing.assert_close(std, std_plain)


def test_teacher_cache_keeps_the_first_images_when_not_all_fit(tmp_path):
    from efficientad_ext.data.image_source import ImageSource
    from efficientad_ext.training import teacher_channel_stats
    from test_train import write_images

    torch.manual_seed(0)
    model = EfficientAD(ModelConfig())
    source = ImageSource(write_images(tmp_path, 5), (256, 256), 2**30)
    cache = TeacherCache(model, len(source), capacity=2)
    assert cache.capacity == 2 and cache.outputs.shape[0] == 2
    assert cache.holds([1, 0]) and not cache.holds([0, 4])
    full = TeacherCache(model, len(source))
    mean, std = teacher_channel_stats(model, source, batch_size=3, keep=cache.outputs)  # chunks straddle the cut
    mean_full, std_full = teacher_channel_stats(model, source, batch_size=3, keep=full.outputs)
    torch.testing.assert_close(cache[[0, 1]], full[[0, 1]], rtol=0, atol=0)
    torch.testing.assert_close((mean, std), (mean_full, std_full), rtol=0, atol=0)  # the statistics see every image
    assert TeacherCache(model, 3, capacity=10).capacity == 3


@pytest.mark.slow
def test_partly_cached_training_resumes_bit_for_bit_and_records_the_cache(tmp_path, monkeypatch):
    import json

    from efficientad_ext.training import train
    from test_train import interrupt_training_after, write_images

    paths = write_images(tmp_path / "train", 4)  # 3 training images, 1 held out
    one = TeacherCache.bytes_needed(EfficientAD(), 1)
    cfg = TrainConfig(steps=4, checkpoint_every=1, validation_fraction=0.25, teacher_cache_bytes=one)
    seen = []
    original = TrainStep.__call__

    def spy(self, step, images, penalty, **kw):
        seen.append(kw.get("teacher_images") is not None)
        return original(self, step, images, penalty, **kw)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    straight = train(paths, tmp_path / "a", config=cfg)
    assert sorted(set(seen)) == [False, True]  # steps on the cached image and on the others
    extra = json.loads((tmp_path / "a" / "training.json").read_text())["extra"]
    assert extra["teacher_cache"] is True and extra["teacher_cache_images"] == 1
    with interrupt_training_after(1):
        train(paths, tmp_path / "b", config=cfg)
    resumed = train(paths, tmp_path / "b", config=cfg, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_bf16_step_keeps_float32_weights_and_losses_and_is_close_to_float32(monkeypatch, memory_format):
    """bf16 autocast: networks in bf16, the hard-feature quantile on float32 differences, float32
    master weights and Adam state; losses and gradients within bf16's tolerance of float32's."""

    seen = []
    original = ops.hard_feature_loss

    def spy(teacher, student, p=0.999, reduction="batch"):
        seen.append((teacher.dtype, student.dtype))
        return original(teacher, student, p, reduction)

    monkeypatch.setattr(efficientad_ext.ops, "hard_feature_loss", spy)
    model, images, penalty = _setup()
    got, grads, expected, ref_grads = _step_and_reference(
        model, images, penalty, precision="bfloat16", cached=True, memory_format=memory_format
    )
    assert seen == [(torch.float32, torch.float32)]
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=0.05, abs=1e-4), k
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0, eps=1e-20)
        assert cos > 0.98, cos
    assert all(p.dtype == torch.float32 for p in model.student.parameters())


def test_step_refuses_an_unresolved_precision_or_memory_format():
    with pytest.raises(ValueError, match="precision must be float32 or bfloat16"):
        TrainStep(EfficientAD(), TrainConfig(), torch.Generator(), "auto")
    with pytest.raises(ValueError, match="memory_format must be contiguous or channels_last"):
        TrainStep(EfficientAD(), TrainConfig(), torch.Generator(), "float32", "auto")
    with pytest.raises(ValueError, match="memory_format must be one of auto, channels_last, contiguous, got 'nhwc'"):
        TrainConfig(memory_format="nhwc")
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'fp16'"):
        TrainConfig(precision="fp16")


@pytest.mark.slow
def test_training_records_its_precision_and_refuses_to_resume_in_another(tmp_path):
    import json

    from efficientad_ext.training import train
    from test_train import write_images

    paths = write_images(tmp_path / "train", 4)
    cfg = TrainConfig(steps=1, checkpoint_every=1, validation_fraction=0.25, precision="float32")
    train(paths, tmp_path / "run", config=cfg)
    extra = json.loads((tmp_path / "run" / "training.json").read_text())["extra"]
    assert extra["precision"] == "float32" and extra["teacher_cache"] is True
    assert extra["cpu_flags"]  # the flags that decide "auto", beside the timing
    bf16 = TrainConfig(steps=2, checkpoint_every=1, validation_fraction=0.25, precision="bfloat16")
    with pytest.raises(
        ValueError, match=r"cannot resume .* in bfloat16: it was trained in float32; pass precision='float32'"
    ):
        train(paths, tmp_path / "run", config=bf16, resume=True)
    # Without room for the cache, training runs the teacher on the image every step.
    train(paths, tmp_path / "nocache", config=TrainConfig(steps=1, validation_fraction=0.25, teacher_cache_bytes=0))
    assert json.loads((tmp_path / "nocache" / "training.json").read_text())["extra"]["teacher_cache"] is False


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision, memory_format",
    [("bfloat16", "contiguous"), ("bfloat16", "channels_last"), ("float32", "channels_last")],
)
def test_training_resumes_bit_for_bit_in_each_precision_and_layout(tmp_path, precision, memory_format):
    import json

    from efficientad_ext import load
    from efficientad_ext.training import MODEL_FILE, train
    from test_train import interrupt_training_after, write_images

    paths = write_images(tmp_path / "train", 4)
    penalty_dir = tmp_path / "penalty"
    write_images(penalty_dir, 2, size=(300, 280), seed=1)
    cfg = TrainConfig(
        steps=2,
        checkpoint_every=1,
        validation_fraction=0.25,
        penalty_dir=str(penalty_dir),
        precision=precision,
        memory_format=memory_format,
    )
    straight = train(paths, tmp_path / "a", config=cfg)
    with interrupt_training_after(1):
        train(paths, tmp_path / "b", config=cfg)
    resumed = train(paths, tmp_path / "b", config=cfg, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    extra = json.loads((tmp_path / "b" / "training.json").read_text())["extra"]
    assert (extra["precision"], extra["memory_format"]) == (precision, memory_format)
    # The model file holds the same values whatever the layout trained in.
    loaded = load(tmp_path / "b" / MODEL_FILE)
    for name, value in resumed.student.state_dict().items():
        assert torch.equal(loaded.student.state_dict()[name], value), name


def test_statistics_pass_runs_the_frozen_teacher_as_cpu_inference_does():
    from efficientad_ext.inference import cpu_winograd
    from efficientad_ext.training.statistics import frozen_teacher_forward

    torch.manual_seed(0)
    model = EfficientAD(ModelConfig()).eval()
    forward = frozen_teacher_forward(model)
    assert isinstance(forward, cpu_winograd.PdnPlan)
    assert [layer.wino is not None for layer in forward.layers] == [False, True, True, True]  # conv1: 3 channels
    x = model.normalize(torch.rand(2, 3, 256, 256))
    with torch.no_grad():
        expected = model.teacher(x)
    got = forward(x)
    assert got.shape == expected.shape
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 2e-5
    small = frozen_teacher_forward(replace_options(model, cpu_winograd_tiles="small"))
    assert small.layers[1].wino.output_tf.shape == (3, 6)
    assert frozen_teacher_forward(replace_options(model, cpu_winograd=False)) == model.teacher.fused_forward
    with pytest.raises(ValueError, match="tiles must be one of"):
        cpu_winograd.PdnPlan(model.teacher, "huge")


def replace_options(model, **changes):
    from dataclasses import replace

    model.inference_options = replace(model.inference_options, **changes)
    return model


@pytest.mark.slow
def test_cpu_winograd_training_records_itself_resumes_bit_for_bit_and_matches_the_direct_step(tmp_path):
    import json

    from efficientad_ext.training import train
    from test_train import interrupt_training_after, write_images

    paths = write_images(tmp_path / "train", 4)
    cfg = TrainConfig(steps=2, checkpoint_every=1, validation_fraction=0.25, precision="float32", cpu_winograd="auto")
    straight = train(paths, tmp_path / "a", config=cfg)
    extra = json.loads((tmp_path / "a" / "training.json").read_text())["extra"]
    # On the CPU in float32 "auto" turns it on, and the auto memory format becomes channels-last.
    assert (extra["cpu_winograd"], extra["memory_format"]) == (True, "channels_last")
    with interrupt_training_after(1):
        train(paths, tmp_path / "b", config=cfg)
    resumed = train(paths, tmp_path / "b", config=cfg, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # The first step from the same weights: the direct step's losses to float32 rounding.
    one = {"steps": 1, "checkpoint_every": 1, "validation_fraction": 0.25, "precision": "float32"}
    train(paths, tmp_path / "w1", config=TrainConfig(**one, cpu_winograd="auto", memory_format="channels_last"))
    train(paths, tmp_path / "d1", config=TrainConfig(**one, cpu_winograd="off", memory_format="channels_last"))
    losses = [json.loads((tmp_path / d / "training.json").read_text())["extra"] for d in ("w1", "d1")]
    assert (losses[0]["cpu_winograd"], losses[1]["cpu_winograd"]) == (True, False)
    for term, value in losses[1]["final_losses"].items():
        assert losses[0]["final_losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-7), term
