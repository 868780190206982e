"""The HTTP application (Starlette, ASGI) of ``efficientad serve``.

Endpoints: ``POST /v1/score`` (``?heatmap=png`` adds each image's overlay as base64 PNG),
``GET /v1/model``, ``GET /healthz`` (the process answers), ``GET /readyz`` (the model is
loaded and warmed up, and the service is not shutting down), ``GET /metrics`` (Prometheus),
``GET /`` (the page). Every refusal is a 4xx with ``{"error": "<one line>"}``; a failed
inference is a 500 with its reason, and the service goes on serving.

Why Starlette and not FastAPI: the service has six routes and no request schema to
validate; FastAPI would add pydantic and its own layer for nothing used here. Starlette is
the ASGI toolkit FastAPI itself is built on, and uvicorn serves it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from importlib import resources

from efficientad_ext.serving.batcher import BatcherClosed
from efficientad_ext.serving.decode import RequestError, decode_image
from efficientad_ext.serving.gates import COOKIE, SIGNIN_PAGE, MetricsLayer, TokenGate, token_matches
from efficientad_ext.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from efficientad_ext.serving.service import ScoringService
from efficientad_ext.serving.uploads import read_images

try:  # the serve extra: pip install ".[serve]"
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    MISSING_EXTRA: str | None = None
except ImportError as _e:  # create_app says what to install
    MISSING_EXTRA = str(_e)

log = logging.getLogger("efficientad_ext.serve")

# The page loads nothing from outside and runs only its own script (no inline code).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/page/app.js": ("app.js", "text/javascript"),
              "/page/app.css": ("app.css", "text/css")}  # fmt: skip


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


async def score(request) -> Response:
    """``POST /v1/score``: every image of the request scored (batched with other requests)."""
    service: ScoringService = request.app.state.service
    started = time.perf_counter()
    heatmap = request.query_params.get("heatmap")
    if heatmap not in (None, "png"):
        return error(400, f"heatmap must be 'png' (or absent), got {heatmap!r}")
    if not service.ready:
        return error(503, "the service is not ready (starting or shutting down)")
    service.receiving += 1
    try:
        files = await read_images(request, service.config)
        limit = service.config.max_image_pixels
        images = await run_in_threadpool(lambda: [decode_image(data, name, limit) for name, data in files])
    except RequestError as e:
        return error(e.status, e.reason)
    finally:
        service.receiving -= 1  # no await between this and submit: the batcher sees the request queued
    try:
        scored = await service.batcher.submit(images, want_maps=heatmap == "png")
    except BatcherClosed as e:
        return error(503, str(e))
    except Exception as e:  # inference failed: this request fails, the service goes on
        log.exception("inference failed")
        return error(500, f"inference failed: {type(e).__name__}: {e}".splitlines()[0])
    elapsed = time.perf_counter() - started
    answers = await run_in_threadpool(
        lambda: [service.answer(name, im, s, elapsed) for (name, _), im, s in zip(files, images, scored)]
    )
    return JSONResponse({"model_digest": service.digest, "threshold": service.threshold, "results": answers})


async def model_card(request) -> Response:
    return JSONResponse(request.app.state.service.card())


async def healthz(request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request) -> Response:
    if request.app.state.service.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, status_code=503)


async def metrics(request) -> Response:
    return Response(request.app.state.service.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


async def page(request) -> Response:
    name, media_type = PAGE_FILES[request.url.path]
    body = resources.files("efficientad_ext.serving").joinpath("page", name).read_bytes()
    headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    return Response(body, media_type=media_type, headers=headers)


async def signin(request) -> Response:
    """``POST /signin`` (the page's form): sets the token as an HttpOnly, SameSite=Strict cookie."""
    token = request.app.state.token
    if token is None:
        return RedirectResponse("/", status_code=303)
    form = await request.form(max_files=0, max_fields=1)
    if not token_matches(str(form.get("token", "")), token):
        return HTMLResponse(SIGNIN_PAGE, status_code=401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


async def unexpected(request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])


def create_app(service: ScoringService):
    """The ASGI application serving ``service`` (token and limits from ``service.config``).
    Its lifespan warms the model up, starts the batcher, and at shutdown (after the server has
    answered the requests in flight) stops it."""
    if MISSING_EXTRA is not None:
        raise ImportError(f'efficientad serve needs the serve extra: pip install ".[serve]" ({MISSING_EXTRA})')

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.warm_up)
        service.batcher.start()
        service.ready = True
        log.info("ready: %s (%s) on %s, %s", service.model_name, service.digest, service.model.device, service.dtype)
        try:
            yield
        finally:
            service.ready = False
            await service.batcher.stop()

    routes = [Route("/v1/score", score, methods=["POST"]), Route("/v1/model", model_card), Route("/healthz", healthz),
              Route("/readyz", readyz), Route("/metrics", metrics), Route("/signin", signin, methods=["POST"])]  # fmt: skip
    routes += [Route(path, page) for path in PAGE_FILES]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: unexpected})
    app.state.service, app.state.token = service, service.config.token
    return MetricsLayer(TokenGate(app, service.config.token), service.metrics)
