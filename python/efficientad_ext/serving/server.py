"""``efficientad serve`` / ``efficientad_ext.serve``: a model file behind uvicorn.

uvicorn's own shutdown is the graceful one the service needs: on SIGINT/SIGTERM it stops
accepting, lets the requests in flight finish (at most ``shutdown_timeout_s``), and only then
runs the app's lifespan end, which drains the batcher.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

import torch

from efficientad_ext.formats.model_file import load_model, model_digest
from efficientad_ext.serving.app import create_app
from efficientad_ext.serving.config import ServeConfig, require_serve_extra
from efficientad_ext.serving.service import ScoringService

log = logging.getLogger("efficientad_ext.serve")

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
SERVE_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = SERVE_MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas for this process (as ``MALLOC_ARENA_MAX`` would); True if done.

    Why: glibc gives each thread that allocates its own arena (up to 8 per core), and keeps
    what was freed in each. The service decodes uploads on a pool of threads and scores on
    another, with buffers of every image size, so its resident memory kept growing under load
    (RESULTS.md: +50 MiB over 192 requests after 300 had been served) without a leak; with 2
    arenas it stayed flat to 6 MiB. Left alone where the user set ``MALLOC_ARENA_MAX``, and
    off glibc (where the call does not exist)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def build_service(
    model_path: str | os.PathLike[str],
    config: ServeConfig,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    allow_unverified: bool = False,
) -> ScoringService:
    """Loads ``model_path`` (its digest checked) onto ``device`` (default: the GPU when there
    is one) and wraps it for serving; raises what ``load_model`` raises for a bad file."""
    require_serve_extra()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_path, device=device, allow_unverified=allow_unverified)
    return ScoringService(model, model_path, model_digest(model_path), config, dtype)


def make_server(service: ScoringService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``service``, not started (``.run()`` blocks; tests and the load
    benchmark run it on a thread and set ``.should_exit``)."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(f'efficientad serve needs the serve extra: pip install ".[serve]" ({e})') from None
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=service.config.shutdown_timeout_s,
        limit_concurrency=1024,
    )
    return uvicorn.Server(config)


def serve(
    model_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    config: ServeConfig | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    allow_unverified: bool = False,
) -> None:
    """Serves ``model_path`` on ``host:port`` until interrupted (see the module docstring)."""
    config = config or ServeConfig()
    limit_malloc_arenas()  # before any thread of the server starts: they then share 2 arenas
    service = build_service(Path(model_path), config, device, dtype, allow_unverified)
    if host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
        log.warning("serving on %s without a token: anyone who reaches this address can use the service", host)
    make_server(service, host, port).run()
