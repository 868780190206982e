"""Reading a scoring request's images off the wire, within the service's limits.

A body is either ``multipart/form-data`` (one or more file parts; any field name) or one raw
image (``image/*`` or ``application/octet-stream``). The body is read in chunks and refused
with 413 as soon as it passes ``max_request_bytes`` (a Content-Length above it is refused
before reading), so a large upload never fills memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from efficientad_ext.serving.config import ServeConfig
from efficientad_ext.serving.decode import RequestError

try:  # the serve extra; serving.app refuses to start without it
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser
except ImportError:  # pragma: no cover - config.require_serve_extra says what to install
    UploadFile = MultiPartParser = MultiPartException = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from starlette.requests import Request

RAW_TYPES = ("application/octet-stream",)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or RequestError(413) once it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length must be a number of bytes, got {declared!r}")
        if int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """(name, file bytes) of every image in the request, in order; RequestError when the body
    has none, too many, a field that is not a file, or an unsupported content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data" and not (content_type.startswith("image/") or content_type in RAW_TYPES):
        raise RequestError(
            415,
            f"Content-Type must be multipart/form-data (image files), image/* or application/octet-stream, "
            f"got {content_type or 'none'!r}",
        )
    body = await read_body(request, config.max_request_bytes)
    if content_type != "multipart/form-data":
        return [("body", body)]
    return await _multipart_files(request, body, config.max_files)


async def _multipart_files(request: Request, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    async def once():
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=max_files, max_fields=max_files)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        status = 413 if "Too many" in e.message else 400
        raise RequestError(status, f"multipart body refused: {e.message}") from None
    files: list[tuple[str, bytes]] = []
    try:
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise RequestError(400, f"form field {field!r} is not a file: send images as file parts")
            files.append((value.filename or field, await value.read()))
    finally:
        await form.close()
    if not files:
        raise RequestError(400, "the request holds no image: send one or more file parts")
    if len(files) > max_files:
        raise RequestError(413, f"{len(files)} images in one request exceed the limit of {max_files}")
    return files
