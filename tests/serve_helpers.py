"""A real ``efficientad serve`` on a loopback port for the service's tests and its load
benchmark: uvicorn on a thread, and a stdlib HTTP client (no client library to install)."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image


def png_bytes(height: int, width: int, seed: int, mode: str = "RGB") -> bytes:
    """A random image of that size as PNG bytes (distinct seeds give distinct scores)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": (height, width, 3), "L": (height, width)}[mode]
    buf = io.BytesIO()
    Image.fromarray((rng.random(channels) * 255).astype(np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def multipart(files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]] = ()) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: ``files`` as (field, file name, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def score(port: int, files: list[tuple[str, bytes]], query: str = "", headers: dict | None = None) -> Answer:
    body, content_type = multipart([("image", name, data) for name, data in files])
    return request(port, "POST", "/v1/score" + query, body, {"Content-Type": content_type, **(headers or {})})


class RunningServer:
    """``make_server(service)`` on 127.0.0.1 and a free port, on a thread, until :meth:`stop`."""

    def __init__(self, service) -> None:
        from efficientad_ext.serving import make_server

        self.service = service
        self.server = make_server(service, "127.0.0.1", 0, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="efficientad-serve-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("the test server did not stop")
