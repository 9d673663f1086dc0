"""Receive a request body into a staged file, streaming: raw bodies and ``multipart/form-data``.

Nothing holds the whole upload in memory. A body past the limit raises 413 as soon as it passes it, and the
staged file is deleted by the caller.
"""

from __future__ import annotations

import re

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import BadRequest, PayloadTooLarge, TensorPressError, ValidationFailed
from app.core.metrics import UPLOAD_BYTES
from app.core.storage import StagedFile, Store

# OpenAPI description of an upload body: raw bytes, or multipart with a `file` part.
UPLOAD_BODY = {"requestBody": {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}},
    "required": True}}


def display_name(name: str | None, filename: str | None, fallback: str) -> str:
    """The name to record: ``?name=`` as given, or the last component of a multipart filename (browsers may
    send a whole client path). Control characters (CR/LF could forge headers or logs) and, in ``?name=``,
    path separators or dot names are refused with 422 rather than quietly changed."""
    loc = ["query", "name"] if name is not None else ["body", "file", "filename"]
    if name is None:
        name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    elif "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise ValidationFailed.at(loc, "a name may not contain '/' or '\\' or be '.' or '..'")
    if re.search(r"[\x00-\x1f\x7f]", name):
        raise ValidationFailed.at(loc, "a name may not contain control characters (CR, LF, NUL, …)")
    return name.strip()[:255] or fallback


async def stage_upload(request: Request, store: Store, fallback_name: str, name: str | None,
                       limit: tuple[int, str]) -> tuple[StagedFile, str]:
    """Receive the body into a staged file (deleted again if receiving fails); returns it and a clean name.
    ``limit``: the most bytes allowed and what to say past it (see ``quotas.upload_limit``)."""
    if name is not None:
        name = display_name(name, None, fallback_name)  # refused before a byte is stored
    staged = store.stage(*limit)
    try:
        try:
            filename = await receive(request, staged)
        finally:
            UPLOAD_BYTES.labels(fallback_name).inc(staged.size)
        return staged, name or display_name(None, filename, fallback_name)
    except BaseException:
        staged.discard()
        raise


async def receive(request: Request, staged: StagedFile, file_field: str = "file") -> str | None:
    """Write the upload into ``staged``; returns the client's filename for multipart bodies."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > staged.limit + (64 << 10):
        raise PayloadTooLarge(staged.exceeded)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        async for chunk in request.stream():
            staged.write(chunk)
        return None
    return await _receive_multipart(request, staged, options.get(b"boundary"), file_field.encode())


async def _receive_multipart(request: Request, staged: StagedFile, boundary: bytes | None,
                             field: bytes) -> str | None:
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    state: dict = {"headers": {}, "name": b"", "found": False, "filename": None, "field": b"", "value": b""}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"")
        if state["name"] == field:
            if state["found"]:
                raise BadRequest(f"more than one {field.decode()!r} part")
            state["found"] = True
            raw = disp.get(b"filename")
            state["filename"] = raw.decode("utf-8", "replace") if raw else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == field:
            staged.write(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except TensorPressError:
        raise
    except Exception as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    if not state["found"]:
        raise BadRequest(f"the multipart body has no {field.decode()!r} part")
    return state["filename"]
