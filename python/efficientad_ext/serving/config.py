"""The service's limits and switches (:class:`ServeConfig`), checked once at start."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

TOKEN_ENV = "EFFICIENTAD_SERVE_TOKEN"
# The serve extra's import names (pip install ".[serve]"); the package imports without them.
SERVE_EXTRA_MODULES = ("starlette", "uvicorn", "multipart", "prometheus_client")


def require_serve_extra() -> None:
    """ImportError naming what to install when a module of the serve extra is missing, before
    a model is loaded or anything half-built fails on it."""
    missing = [m for m in SERVE_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f'efficientad serve needs the serve extra: pip install ".[serve]" (missing: {", ".join(missing)})'
        )


@dataclass(frozen=True)
class ServeConfig:
    """How ``efficientad serve`` batches and what it accepts.

    ``max_batch`` images at most run as one batch; a batch waits at most ``max_wait_ms`` for
    companions, and only while other requests are still being received (one client never
    waits). ``max_request_bytes`` bounds a request body, ``max_image_pixels`` one image's
    width x height (checked from its header, before decoding), ``max_files`` the images of
    one request. ``token``: when set, every endpoint but ``/healthz`` (and the page's sign-in)
    needs ``Authorization: Bearer <token>`` or the page's cookie. ``shutdown_timeout_s``: how
    long a shutdown waits for requests in flight before closing them.
    """

    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 25_000_000
    max_files: int = 16
    token: str | None = None
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_request_bytes", "max_image_pixels", "max_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (0.0 <= float(self.max_wait_ms) <= 10_000.0):
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
        if not float(self.shutdown_timeout_s) > 0.0:
            raise ValueError(f"shutdown_timeout_s must be > 0, got {self.shutdown_timeout_s!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ValueError("token must be a non-empty string without whitespace")


def token_from_environment(token: str | None) -> str | None:
    """``token`` if given, else ``$EFFICIENTAD_SERVE_TOKEN`` when set and non-empty, else None."""
    if token is not None:
        return token
    return os.environ.get(TOKEN_ENV) or None
