"""``efficientad serve`` end to end on a real uvicorn server on loopback: the scores equal
``infer``'s, concurrent requests are batched yet answered one by one, every bad input is a 4xx
with a reason and the service keeps serving, the token, graceful shutdown, the page in headless
chromium; and the batcher on its own."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("multipart")

import efficientad_ext  # noqa: E402
from browser_helpers import headless_chromium  # noqa: E402
from conftest import data_root  # noqa: E402
from efficientad_ext.cli import main  # noqa: E402
from efficientad_ext.formats.model_file import model_digest  # noqa: E402
from efficientad_ext.models.efficientad import DecisionThreshold, EfficientAD  # noqa: E402
from efficientad_ext.serving import ServeConfig, build_service  # noqa: E402
from efficientad_ext.serving.batcher import BatcherClosed, DynamicBatcher  # noqa: E402
from efficientad_ext.serving.server import limit_malloc_arenas  # noqa: E402
from serve_helpers import RunningServer, multipart, png_bytes, request, score  # noqa: E402

LIMITS = dict(max_batch=8, max_wait_ms=200.0, max_image_pixels=600 * 600, max_request_bytes=2 * 2**20, max_files=4)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = EfficientAD()
    # A threshold inside the random model's score range, so both decisions occur.
    model.threshold = DecisionThreshold(value=1.5e-4, method="normal_holdout_fpr", details={"fpr": 0.01})
    path = tmp_path_factory.mktemp("serve") / "model.safetensors"
    efficientad_ext.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def server(model_file):
    running = RunningServer(build_service(model_file, ServeConfig(**LIMITS), device="cpu"))
    yield running
    running.stop()


def reference(server, data: bytes):
    """What ``infer`` gives for this file, with the served model itself."""
    return efficientad_ext.infer([Image.open(io.BytesIO(data))], model=server.service.model)


def test_scores_equal_infer_with_heatmaps(server, model_file):
    files = [("a.png", png_bytes(256, 256, 1)), ("b.png", png_bytes(300, 280, 2)), ("c.png", png_bytes(256, 256, 3))]
    answer = score(server.port, files, "?heatmap=png")
    assert answer.status == 200, answer.body
    body = answer.json()
    digest = model_digest(model_file)
    assert digest.startswith("sha256-v1:") and body["model_digest"] == digest
    assert [r["name"] for r in body["results"]] == ["a.png", "b.png", "c.png"]  # the request's order
    for (_, data), r in zip(files, body["results"]):
        ref = reference(server, data)
        assert r["score"] == pytest.approx(float(ref.score[0]), rel=1e-5, abs=1e-9)
        assert r["normalized_score"] == pytest.approx(float(ref.normalized_score[0]), rel=1e-5, abs=1e-9)
        assert r["is_anomalous"] == bool(ref.is_anomalous[0])
        assert r["threshold"] == 1.5e-4 and r["model_digest"] == digest and r["time_ms"] > 0
        overlay = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
        assert overlay.size == Image.open(io.BytesIO(data)).size and overlay.mode == "RGB"
    # One raw image body, no heatmap asked: the same score, no heatmap field.
    raw = request(server.port, "POST", "/v1/score", files[1][1], {"Content-Type": "image/png"}).json()["results"][0]
    assert raw["name"] == "body" and "heatmap_png" not in raw
    assert raw["score"] == pytest.approx(body["results"][1]["score"], rel=1e-5, abs=1e-9)


def test_model_card_health_and_metrics(server, model_file):
    card = request(server.port, "GET", "/v1/model").json()
    assert card["architecture"] == "EfficientAD-S" and card["image_size"] == [256, 256]
    assert card["threshold"] == {"value": 1.5e-4, "method": "normal_holdout_fpr", "details": {"fpr": 0.01}}
    assert card["digest"] == model_digest(model_file) and card["file"] == "model.safetensors"
    assert card["dtype"] == "float32" and card["device"] == "cpu" and card["training_steps"] == 0
    assert str(model_file.parent) not in str(card)  # no absolute path in a public card
    assert request(server.port, "GET", "/healthz").json() == {"status": "ok"}
    assert request(server.port, "GET", "/readyz").json() == {"ready": True}
    score(server.port, [("m.png", png_bytes(64, 64, 9))])
    text = request(server.port, "GET", "/metrics").body.decode()
    assert 'efficientad_requests_total{endpoint="/v1/score",status="200"}' in text
    assert "efficientad_batch_size_bucket" in text and "efficientad_request_latency_seconds_bucket" in text
    assert "efficientad_images_scored_total" in text and "efficientad_requests_in_flight" in text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    images = [png_bytes(200 + 9 * i, 260 - 7 * i, 100 + i) for i in range(12)]  # twelve sizes: batched all the same
    answers: dict[int, object] = {}
    start = threading.Barrier(len(images))

    def client(i: int) -> None:
        start.wait()
        answers[i] = score(server.port, [(f"img{i}.png", images[i])])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(answers) == list(range(len(images)))
    sizes = []
    for i, data in enumerate(images):
        assert answers[i].status == 200, answers[i].body
        r = answers[i].json()["results"][0]
        assert r["name"] == f"img{i}.png"
        assert r["score"] == pytest.approx(float(reference(server, data).score[0]), rel=1e-5, abs=1e-9)
        sizes.append(r["batch_size"])
    assert max(sizes) > 1, sizes  # 12 simultaneous clients were not all scored one by one
    assert max(sizes) <= LIMITS["max_batch"]


def _float_tiff_with_nan() -> bytes:
    a = np.full((64, 64), 0.5, dtype=np.float32)
    a[3, 3] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _bad_requests(port: int) -> list[tuple[str, object, int, str]]:
    good = png_bytes(64, 64, 5)
    form_with_field, form_type = multipart([("image", "a.png", good)], fields=[("note", "hello")])
    post = lambda body, ctype, q="": request(port, "POST", "/v1/score" + q, body, {"Content-Type": ctype})  # noqa: E731
    return [
        ("not an image", score(port, [("x.png", b"this is text")]), 400, "not an image file"),
        ("truncated", score(port, [("t.png", good[: len(good) // 2])]), 400, "truncated"),
        ("too many pixels", score(port, [("big.png", png_bytes(700, 700, 6, "L"))]), 413, "exceeds the limit"),
        ("too many bytes", post(os.urandom(3 * 2**20), "application/octet-stream"), 413, "exceeds the limit"),
        ("too many files", score(port, [(f"{i}.png", good) for i in range(5)]), 413, "Too many files"),
        ("unsupported image", score(port, [("nan.tif", _float_tiff_with_nan())]), 400, "NaN"),
        ("too small", score(port, [("s.png", png_bytes(20, 20, 7))]), 400, "at least 33x33"),
        ("empty file", score(port, [("e.png", b"")]), 400, "empty"),
        ("no files", post(*multipart([])), 400, "no image"),
        ("a field, not a file", post(form_with_field, form_type), 400, "not a file"),
        ("wrong content type", post(good, "text/plain"), 415, "Content-Type"),
        ("bad heatmap option", post(good, "image/png", "?heatmap=jpeg"), 400, "heatmap"),
        ("wrong method", request(port, "GET", "/v1/score"), 405, ""),
        ("unknown path", request(port, "GET", "/nowhere"), 404, ""),
    ]


def test_every_bad_input_is_a_4xx_with_a_reason_and_the_service_keeps_serving(server):
    for what, answer, status, words in _bad_requests(server.port):
        assert answer.status == status, (what, answer.status, answer.body[:300])
        if words:
            reason = answer.json()["error"]
            assert words in reason and "\n" not in reason, (what, reason)
    assert score(server.port, [("ok.png", png_bytes(64, 64, 8))]).status == 200
    assert (
        'efficientad_request_errors_total{kind="server"}' not in request(server.port, "GET", "/metrics").body.decode()
    )


def test_a_failed_inference_is_a_500_and_the_service_keeps_serving(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure\nsecond line")

    monkeypatch.setattr(server.service.model, "infer_each", broken)
    answer = score(server.port, [("a.png", png_bytes(64, 64, 1))])
    assert answer.status == 500 and answer.json()["error"] == "inference failed: RuntimeError: simulated failure"
    monkeypatch.undo()
    assert score(server.port, [("a.png", png_bytes(64, 64, 1))]).status == 200
    assert request(server.port, "GET", "/readyz").status == 200


def test_token_guards_every_endpoint_but_healthz(model_file):
    running = RunningServer(build_service(model_file, ServeConfig(token="s3cret-token"), device="cpu"))
    try:
        port, auth = running.port, {"Authorization": "Bearer s3cret-token"}
        assert request(port, "GET", "/healthz").status == 200
        for path in ("/v1/model", "/readyz", "/metrics", "/page/app.js"):
            assert request(port, "GET", path).status == 401, path
            assert request(port, "GET", path, headers={"Authorization": "Bearer wrong"}).status == 401, path
            assert request(port, "GET", path, headers=auth).status == 200, path
        refused = score(port, [("a.png", png_bytes(64, 64, 1))])
        assert refused.status == 401 and "token" in refused.json()["error"]
        assert score(port, [("a.png", png_bytes(64, 64, 1))], headers=auth).status == 200
        page = request(port, "GET", "/")
        assert page.status == 401 and b"<form method=post action=/signin>" in page.body
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request(port, "POST", "/signin", b"token=wrong", form).status == 401
        signed = request(port, "POST", "/signin", b"token=s3cret-token", form)
        assert signed.status == 303 and "httponly" in signed.headers["set-cookie"].lower()
        cookie = signed.headers["set-cookie"].split(";")[0]
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        assert request(port, "GET", "/", headers={"Cookie": cookie}).status == 200
    finally:
        running.stop()


def test_shutdown_answers_the_requests_in_flight(model_file):
    running = RunningServer(build_service(model_file, ServeConfig(max_batch=2), device="cpu"))
    model = running.service.model
    real_infer, real_infer_each = model.infer, model.infer_each

    def slow_infer(*args, **kwargs):
        time.sleep(0.4)
        return real_infer_each(*args, **kwargs)

    model.infer_each = slow_infer
    images = [png_bytes(64, 64, 200 + i) for i in range(5)]
    answers: dict[int, object] = {}

    def client(i: int) -> None:
        answers[i] = score(running.port, [(f"{i}.png", images[i])])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while running.service.metrics.in_flight._value.get() < len(images) and time.monotonic() < deadline:
        time.sleep(0.01)
    running.stop()  # asks uvicorn to exit with all five in flight (five batches of 0.4 s at most two each)
    for t in threads:
        t.join(60)
    model.infer_each = real_infer_each
    for i, data in enumerate(images):
        assert answers[i].status == 200, (i, answers[i].body)
        expected = float(real_infer([Image.open(io.BytesIO(data))]).score[0])
        assert answers[i].json()["results"][0]["score"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    with pytest.raises(ConnectionRefusedError):
        request(running.port, "GET", "/healthz")


# --- the batcher on its own ---------------------------------------------------------------


def _fake_score(calls: list):
    def score_fn(images: list[torch.Tensor], want_maps: bool):
        calls.append([tuple(im.shape) for im in images])
        if any((im < 0).any() for im in images):
            raise RuntimeError("poisoned")
        scores = torch.stack([im.mean() for im in images])
        return scores, ([im[0] for im in images] if want_maps else None)

    return score_fn


def test_batcher_groups_splits_isolates_failures_and_drains():
    calls: list = []

    async def scenario():
        receiving = {"n": 3}
        batcher = DynamicBatcher(_fake_score(calls), max_batch=4, max_wait_ms=500, receiving=lambda: receiving["n"])
        batcher.start()
        a = [torch.full((3, 40, 40), 0.1)]
        b = [torch.full((3, 40, 50), 0.2), torch.full((3, 40, 40), 0.3)]  # two sizes, one call
        poisoned = [torch.full((3, 40, 40), -1.0)]
        big = [torch.full((3, 40, 40), 0.4 + i / 100) for i in range(6)]  # more than max_batch: alone, in chunks
        tasks = [asyncio.ensure_future(batcher.submit(x, want_maps=(x is b))) for x in (a, b, poisoned)]
        await asyncio.sleep(0.05)
        receiving["n"] = 0
        results = await asyncio.gather(*tasks, return_exceptions=True)
        big_result = await batcher.submit(big)
        late = asyncio.ensure_future(batcher.submit(a))
        await asyncio.sleep(0)  # the late request is submitted (queued) ...
        await asyncio.wait_for(batcher.stop(), 30)  # the queued request is still answered (a hang fails here)
        with pytest.raises(BatcherClosed):
            await batcher.submit(a)
        return results, big_result, await late

    (ra, rb, rp), big_result, late = asyncio.run(scenario())
    assert isinstance(rp, RuntimeError)  # the poisoned request failed alone ...
    assert [round(s.score, 4) for s in ra] == [0.1] and [round(s.score, 4) for s in rb] == [0.2, 0.3]  # ... not these
    assert ra[0].anomaly_map is None and rb[0].anomaly_map.shape == (40, 50)
    assert [round(s.score, 4) for s in big_result] == [round(0.4 + i / 100, 4) for i in range(6)]
    assert [s.batch_size for s in big_result] == [4, 4, 4, 4, 2, 2]
    assert round(late[0].score, 4) == 0.1
    # a, b (two sizes) and the poisoned one in one call, then each alone; big in chunks of 4 and 2
    assert calls[0] == [(3, 40, 40), (3, 40, 50), (3, 40, 40), (3, 40, 40)]
    assert calls[1:4] == [[(3, 40, 40)], [(3, 40, 50), (3, 40, 40)], [(3, 40, 40)]]
    assert [len(c) for c in calls[4:]] == [4, 2, 1]


def test_batcher_does_not_wait_when_no_other_request_is_arriving():
    async def scenario():
        batcher = DynamicBatcher(_fake_score([]), max_batch=8, max_wait_ms=5000)
        batcher.start()
        started = time.perf_counter()
        await batcher.submit([torch.full((3, 40, 40), 0.5)])
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 2.5  # not the 5 s wait: nobody else was being received


# --- configuration and command line ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(max_batch=0), "max_batch"),
        (dict(max_files=-1), "max_files"),
        (dict(max_wait_ms=-1.0), "max_wait_ms"),
        (dict(token=""), "token"),
        (dict(token="a b"), "token"),
        (dict(shutdown_timeout_s=0.0), "shutdown_timeout_s"),
    ],
)
def test_config_refuses_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ServeConfig(**kwargs)


def test_cli_serve_reports_a_missing_model_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "absent.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("efficientad serve: error:") and "absent.safetensors" in err and "\n" not in err


def test_cli_serve_without_the_extra_says_what_to_install(model_file, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a)
    )
    assert main(["serve", str(model_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == 'efficientad serve: error: efficientad serve needs the serve extra: pip install ".[serve]" (missing: uvicorn)'
    )


def test_malloc_arenas_are_capped_unless_the_user_chose(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's choice stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


# --- the page, in a real headless browser ----------------------------------------------------


def real_test_image(tmp_path: Path) -> Path:
    """A real defect image (magnetic-tile, crack) where the shared data are; else a generated PNG."""
    root = data_root()
    cracks = sorted((root / "magnetic-tile" / "test" / "crack").glob("*.jpg")) if root else []
    if cracks:
        return cracks[0]
    image = tmp_path / "part.png"
    image.write_bytes(png_bytes(300, 280, 42))
    return image


DROP_JS = """([selector, name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: "image/png"}));
  document.querySelector(selector).dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
}"""


def drop_file(page, selector: str, name: str, data: bytes) -> str:
    """Drops ``data`` as a file on ``selector`` (a real DragEvent with a DataTransfer) and
    returns the score the page then shows."""
    before = page.evaluate("document.getElementById('score').textContent")
    page.evaluate(DROP_JS, [selector, name, base64.b64encode(data).decode()])
    # A function, not an expression string: the page's CSP forbids eval, which polling a string uses.
    page.wait_for_function("(b) => document.getElementById('score').textContent !== b", arg=before, timeout=60_000)
    return page.evaluate("document.getElementById('score').textContent")


def test_page_scores_a_chosen_and_a_dropped_image_in_headless_chromium(server, tmp_path):
    image = real_test_image(tmp_path)
    data = image.read_bytes()
    ref = reference(server, data)
    seen: dict = {"errors": [], "failed": []}
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("requestfailed", lambda r: seen["failed"].append(r.url))
        page.on("response", lambda r: r.status >= 400 and seen["failed"].append(f"{r.status} {r.url}"))
        page.goto(f"http://127.0.0.1:{server.port}/", wait_until="load", timeout=60_000)
        page.wait_for_selector("#card tr", timeout=30_000)
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.wait_for_function("() => document.getElementById('heatmap').complete && "
                               "document.getElementById('heatmap').naturalWidth > 0", timeout=30_000)  # fmt: skip
        shown = page.evaluate(
            "({score: document.getElementById('score').textContent, "
            "verdict: document.getElementById('verdict').textContent, "
            "card: document.getElementById('card').textContent, "
            "w: document.getElementById('heatmap').naturalWidth, h: document.getElementById('heatmap').naturalHeight})"
        )
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        dropped = drop_file(page, "#drop", "dropped.png", png_bytes(90, 120, 7))
    assert seen == {"errors": [], "failed": []}
    assert float(dropped) == pytest.approx(float(reference(server, png_bytes(90, 120, 7)).score[0]), rel=1e-4)
    assert float(shown["score"]) == pytest.approx(float(ref.score[0]), rel=1e-4, abs=1e-6)
    assert shown["verdict"] == ("ANOMALOUS" if bool(ref.is_anomalous[0]) else "normal")
    assert (shown["w"], shown["h"]) == Image.open(image).size  # the overlay at the image's own size
    assert "EfficientAD-S" in shown["card"] and "sha256-v1:" in shown["card"]
    pixels = np.asarray(Image.open(tmp_path / "page.png").convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # drawn: the image, its heatmap and the tables
    keep = os.environ.get("EFFICIENTAD_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "page.png", Path(keep) / "serve_page.png")
