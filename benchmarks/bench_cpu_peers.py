"""Side by side on the CPU: our EfficientAD-S inference and training step vs anomalib's and
OpenVINO's, same seeded random weights, same inputs, same thread count (issue #6).

Groups (per call; ``extra_info.batch`` gives the per-image cost):

* ``peers infer S 256x256 B={1,8}``: ``ours`` (``EfficientAD.infer``, float32: Winograd
  convolutions, :mod:`efficientad_ext.inference.cpu_winograd`), ``ours_direct`` (the same with
  ``EFFICIENTAD_CPU_WINOGRAD`` off: oneDNN direct convolutions), ``ours_bf16``
  (``infer(dtype=torch.bfloat16)``), ``anomalib`` (anomalib 2.7's ``EfficientAdModel``, eager
  float32, our weights via :func:`efficientad_ext.formats.anomalib.to_anomalib_state_dict`),
  ``openvino_f32`` / ``openvino_bf16`` (``openvino.convert_model`` of the plain ``torch.nn``
  reference of Algorithm 2: our networks + ``reference.anomaly_maps``;
  ``INFERENCE_PRECISION_HINT`` set; the precision OpenVINO actually used is recorded).
* ``peers train step S 256x256 B={1,8}``: one optimisation step (forward, backward, Adam) with
  a penalty batch: ``ours`` (``train.TrainStep``) vs ``anomalib`` (``EfficientAdModel`` in
  training mode + Adam, as its Lightning module steps), same weights and images.

Threads: ``EFFICIENTAD_BENCH_THREADS`` (default: torch's default) sets torch's and OpenVINO's
thread count; recorded in ``extra_info.threads``. Peers that are not installed skip with the
reason. ``ours_bf16`` skips on CPUs without native bfloat16 (AVX2 only: bfloat16
convolutions fall back to a reference path ~10x slower than float32) unless
``EFFICIENTAD_BENCH_SLOW_BF16=1``.

    python -m pytest benchmarks/bench_cpu_peers.py --benchmark-only -rs --benchmark-json=peers.json \\
        && python benchmarks/peers_table.py peers.json
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from efficientad_ext import reference
from efficientad_ext.models.efficientad import EfficientAD, ModelConfig
from efficientad_ext.training import TrainConfig, TrainStep

IMAGE = 256
BATCHES = [1, 8]
SEED = 0

if os.environ.get("EFFICIENTAD_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["EFFICIENTAD_BENCH_THREADS"]))
THREADS = torch.get_num_threads()


@pytest.fixture
def device() -> torch.device:
    """CPU only (overrides the conftest's device parameter)."""
    return torch.device("cpu")


def _native_bf16() -> bool:
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported())


# ----------------------------------------------------------------------------- shared set-up


@pytest.fixture(scope="module")
def model() -> EfficientAD:
    """EfficientAD-S (unpadded, as anomalib's default), seeded random weights, teacher
    mean/std and map quantiles calibrated on random images so that the maps are spread."""
    torch.manual_seed(SEED)
    m = EfficientAD(ModelConfig(arch="small", padded=False, image_size=(IMAGE, IMAGE))).eval()
    calib = torch.rand(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        x = m.normalize(calib)
        t = m.teacher(x)
        m.teacher_mean.copy_(t.mean(dim=(0, 2, 3)))
        m.teacher_std.copy_(t.std(dim=(0, 2, 3)))
        st, ae = m.raw_maps(x)
        m.quantiles.copy_(torch.stack([st.quantile(0.9), st.max(), ae.quantile(0.9), ae.max()]))
    m.calibrated = True
    return m


def _images(batch: int, seed: int) -> Tensor:
    return torch.rand(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def expected(model):
    """Our float32 result per batch size, computed once (direct convolutions)."""
    cache: dict[int, tuple[Tensor, Tensor]] = {}

    def get(batch: int) -> tuple[Tensor, Tensor]:
        if batch not in cache:
            options = model.inference_options
            model.inference_options = replace(options, cpu_winograd=False)
            try:
                out = model.infer(_images(batch, SEED + 2))
            finally:
                model.inference_options = options
            cache[batch] = (out.anomaly_map, out.score)
        return cache[batch]

    return get


def _check_against(expected_map: Tensor, expected_score: Tensor, rel: float):
    """Map and score within ``rel`` of the expected map's value range."""

    def check(out) -> None:
        anomaly_map, score = out
        span = float(expected_map.max() - expected_map.min())
        assert anomaly_map.shape == expected_map.shape, (anomaly_map.shape, expected_map.shape)
        map_err = float((anomaly_map.float() - expected_map).abs().max())
        score_err = float((score.float().flatten() - expected_score).abs().max())
        assert map_err <= rel * span and score_err <= rel * span, (map_err, score_err, span)

    return check


def _anomalib():
    try:
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize
    except Exception as exc:  # noqa: BLE001 - any import failure means "not installed here"
        pytest.skip(
            f"anomalib not importable: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        )
    try:
        from efficientad_ext.formats.anomalib import to_anomalib_state_dict
    except ImportError as exc:
        pytest.skip(f"efficientad_ext.formats.anomalib not available: {exc}")
    return EfficientAdModel, EfficientAdModelSize, to_anomalib_state_dict


def _anomalib_model(model: EfficientAD):
    EfficientAdModel, EfficientAdModelSize, to_anomalib_state_dict = _anomalib()
    peer = EfficientAdModel(
        teacher_out_channels=model.config.teacher_channels,
        model_size=EfficientAdModelSize.S,
        padding=model.config.padded,
        pad_maps=True,
    )
    peer.load_state_dict(to_anomalib_state_dict(model), strict=True)
    return peer


def _openvino():
    try:
        import openvino as ov
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"openvino not importable: {type(exc).__name__}: {exc}")
    return ov


class _ReferenceInference(nn.Module):
    """Algorithm 2 in plain torch.nn (what OpenVINO converts): normalise once, the three
    networks, ``reference.anomaly_maps``."""

    def __init__(self, model: EfficientAD) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        xn = m.normalize(x)
        t, s, a = m.teacher(xn), m.student(xn), m.autoencoder(xn, m.feature_size)
        return reference.anomaly_maps(
            t, m.teacher_mean, m.teacher_std, s, a, m.quantiles, tuple(x.shape[-2:]), m.map_border
        )


# ----------------------------------------------------------------------------- inference

INFER_IMPLS = ["ours", "ours_direct", "ours_bf16", "anomalib", "openvino_f32", "openvino_bf16"]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("impl", INFER_IMPLS)
def test_infer(measure, model, expected, batch, impl):
    x = _images(batch, SEED + 2)
    exp_map, exp_score = expected(batch)
    extra: dict = {}
    rel = 1e-4  # float32 paths: same function up to rounding (tests/test_cpu_inference.py)
    if impl in ("ours", "ours_direct", "ours_bf16"):
        dtype = torch.bfloat16 if impl == "ours_bf16" else torch.float32
        if impl == "ours_bf16":
            rel = 0.05  # bfloat16 features: reported, not a conformance check
            if not _native_bf16() and os.environ.get("EFFICIENTAD_BENCH_SLOW_BF16") != "1":
                pytest.skip(
                    "no native bfloat16 on this CPU: bf16 convolutions fall back to ATen's reference path "
                    "(~10x slower than float32); EFFICIENTAD_BENCH_SLOW_BF16=1 runs it anyway"
                )
        winograd = impl == "ours"

        def fn():
            options = model.inference_options
            model.inference_options = replace(options, cpu_winograd=winograd)
            try:
                out = model.infer(x, dtype=dtype)
            finally:
                model.inference_options = options
            return out.anomaly_map, out.score

    elif impl == "anomalib":
        peer = _anomalib_model(model).eval()
        rel = 1e-3  # anomalib normalises inside each network: same values up to rounding

        def fn():
            with torch.no_grad():
                out = peer(x)
            return out.anomaly_map, out.pred_score

    else:
        ov = _openvino()
        precision = "f32" if impl == "openvino_f32" else "bf16"
        core = ov.Core()
        ov_model = ov.convert_model(_ReferenceInference(model), example_input=x)
        compiled = core.compile_model(
            ov_model,
            "CPU",
            {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()
        used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        extra.update(openvino=ov.__version__, precision_hint=precision, precision_used=used)
        if precision == "bf16":
            rel = 0.05
        feed = x.numpy()

        def fn():
            res = request.infer([feed])
            return torch.from_numpy(res[0].copy()), torch.from_numpy(res[1].copy())

    measure(
        fn,
        check=_check_against(exp_map, exp_score, rel),
        op="peers infer",
        group=f"peers infer S {IMAGE}x{IMAGE} B={batch}",
        impl=impl,
        case=f"infer B={batch}",
        batch=batch,
        target_s=4.0,
        **extra,
    )


# ----------------------------------------------------------------------------- training step


def _train_inputs(batch: int) -> tuple[Tensor, Tensor]:
    return _images(batch, SEED + 3), _images(batch, SEED + 4)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("impl", ["ours", "anomalib"])
def test_train_step(measure, model, batch, impl):
    images, penalty = _train_inputs(batch)
    if impl == "ours":
        m = copy.deepcopy(model)
        m.teacher.eval()
        m.student.train()
        m.autoencoder.train()
        step = TrainStep(m, TrainConfig(steps=10**6, batch_size=batch), torch.Generator().manual_seed(SEED))

        def fn():
            return step(0, images, penalty)["loss"]

    else:
        peer = _anomalib_model(model).train()
        params = list(peer.student.parameters()) + list(peer.ae.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
        torch.manual_seed(SEED)

        def fn():
            loss_st, loss_ae, loss_stae = peer(batch=images, batch_imagenet=penalty)
            loss = loss_st + loss_ae + loss_stae
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

    def check(loss) -> None:
        assert loss == loss and abs(loss) < float("inf"), loss

    measure(
        fn,
        check=check,
        op="peers train step",
        group=f"peers train step S {IMAGE}x{IMAGE} B={batch}",
        impl=impl,
        case=f"train step B={batch}",
        batch=batch,
        target_s=4.0,
    )
