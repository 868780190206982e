"""``efficientad serve``: an HTTP scoring service for one model file (the ``serve`` extra:
``pip install ".[serve]"``). :func:`serve` runs it; :func:`build_service` and
:func:`make_server` give the pieces (the tests and ``benchmarks/serve_load.py`` use them)."""

from efficientad_ext.serving.config import TOKEN_ENV, ServeConfig, token_from_environment
from efficientad_ext.serving.server import build_service, make_server, serve

__all__ = ["TOKEN_ENV", "ServeConfig", "build_service", "make_server", "serve", "token_from_environment"]
