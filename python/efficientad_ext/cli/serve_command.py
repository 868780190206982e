"""``efficientad serve MODEL``: the HTTP scoring service (:mod:`efficientad_ext.serving`)."""

from __future__ import annotations

import argparse
import sys

from efficientad_ext.api import serve
from efficientad_ext.cli.options import DEVICE_HELP, add_model_arg
from efficientad_ext.serving import TOKEN_ENV, ServeConfig, token_from_environment


def cmd_serve(args) -> int:
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_request_bytes=args.max_request_bytes,
        max_image_pixels=args.max_image_pixels,
        max_files=args.max_files,
        token=token_from_environment(args.token),
        shutdown_timeout_s=args.shutdown_timeout,
    )
    try:
        serve(
            args.model,
            args.host,
            args.port,
            device=args.device,
            dtype=args.dtype,
            config=config,
            allow_unverified=args.allow_unverified,
        )
    except ImportError as e:
        print(f"efficientad serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help="serve a model over HTTP: POST /v1/score, a page at /, /metrics")
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; set a token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (default: infer's: bfloat16 on capable GPUs, float32 on the CPU)",
    )
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per batch at most")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help="longest wait for companions of a batch (only while other requests are still arriving)",
    )
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, help="largest request body")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="largest image, width x height")
    p.add_argument("--max-files", type=int, default=d.max_files, help="most images in one request")
    p.add_argument("--token", help=f"bearer token every endpoint but /healthz requires (default: ${TOKEN_ENV})")
    p.add_argument(
        "--shutdown-timeout", type=float, default=d.shutdown_timeout_s, help="seconds a shutdown waits for requests"
    )
    p.set_defaults(func=cmd_serve)
