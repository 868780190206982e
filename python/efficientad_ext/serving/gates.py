"""The two ASGI layers around every request: the bearer-token gate and the metrics.

Both are plain ASGI (no framework base class): they see every request, 404s and refusals
included, and never read the body.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

from efficientad_ext.serving.metrics import ServiceMetrics

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
COOKIE = "efficientad_token"
OPEN_PATHS = frozenset({"/healthz", "/signin"})  # answered without a token (sign-in checks it itself)
ENDPOINTS = frozenset({"/", "/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics", "/signin", "/page/app.js",
                       "/page/app.css"})  # fmt: skip
SIGNIN_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>EfficientAD service: sign in</title>"
    "<h1>EfficientAD service</h1><p>This service needs its access token.</p>"
    "<form method=post action=/signin><label>Token <input type=password name=token autocomplete=off required></label> "
    "<button>Sign in</button></form></html>"
)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def token_matches(candidate: str | None, token: str) -> bool:
    """Constant-time comparison (a mismatch takes as long wherever it happens)."""
    return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())


def presented_token(scope: dict) -> str | None:
    """The token a request carries: ``Authorization: Bearer <t>``, else the page's cookie."""
    auth = _header(scope, b"authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    cookie = _header(scope, b"cookie")
    if cookie:
        jar = SimpleCookie()
        try:
            jar.load(cookie)
        except Exception:  # a malformed Cookie header is simply no token
            return None
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


async def send_simple(send: Callable, status: int, body: bytes, content_type: str, extra: list | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class TokenGate:
    """401 for every request without the right token, except :data:`OPEN_PATHS`. A browser
    asking for the page gets a sign-in form (still 401); JSON clients get a JSON reason."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if token_matches(presented_token(scope), self.token):
            return await self.app(scope, receive, send)
        challenge = [(b"www-authenticate", b'Bearer realm="efficientad"')]
        if scope["path"] == "/" and scope["method"] == "GET":
            return await send_simple(send, 401, SIGNIN_PAGE.encode(), "text/html; charset=utf-8", challenge)
        reason = "missing or wrong access token: send Authorization: Bearer <token>"
        await send_simple(send, 401, json.dumps({"error": reason}).encode(), "application/json", challenge)


class MetricsLayer:
    """Counts every answer by endpoint and status and times it; the in-flight gauge."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - started)
