"""Limits every request meets before the application sees it, each refused with problem+json:

- :class:`RequestLimits` (outermost): a request head over ``TENSORPRESS_MAX_HEADER_BYTES`` is 431; a body that
  sends nothing for ``TENSORPRESS_BODY_IDLE_TIMEOUT_S`` (shorter than its Content-Length, a stalled upload) is
  408 and its connection closed; an upload's staging file goes with the error that stops it.
- :class:`JsonBodyLimit`: every body except the streamed model and dataset uploads is held to
  ``TENSORPRESS_MAX_JSON_BYTES`` before any parsing; past it, 413.
"""

from __future__ import annotations

import asyncio
import json

from app.core.errors import PROBLEM_JSON, HeadersTooLarge, PayloadTooLarge, RequestTimeout, TensorPressError
from app.core.settings import get_settings

UPLOAD_PATHS = ("/v1/models", "/v1/datasets")  # these stream to storage under their own limits


class JsonBodyLimit:
    """Pure ASGI middleware: reads a non-upload body up to the limit, then hands it on; refuses it past it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or (
                scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_json_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > limit
        body, more = b"", not too_large
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > limit
            more = more and not too_large
        if too_large:
            await send_problem(send, PayloadTooLarge(
                f"the request body exceeds {limit} bytes (TENSORPRESS_MAX_JSON_BYTES)"))
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def send_problem(send, problem: TensorPressError) -> None:
    """Answer with ``problem`` and close the connection (what is left of the request is not read)."""
    payload = json.dumps(problem.to_problem()).encode()
    await send({"type": "http.response.start", "status": problem.status, "headers": [
        (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class RequestLimits:
    """Pure ASGI middleware: the size of the request head, and how long its body may stay silent."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        head = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b"")) + sum(
            len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > settings.max_header_bytes:
            await send_problem(send, HeadersTooLarge(f"the request head is {head} bytes, over "
                                                     f"{settings.max_header_bytes} (TENSORPRESS_MAX_HEADER_BYTES)"))
            return
        idle = settings.body_idle_timeout_s
        body_done, started = False, False

        async def timed_receive():
            nonlocal body_done
            if body_done:  # after the body, receive() waits for the client to leave: no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), idle)
            except TimeoutError:
                raise RequestTimeout(f"the request body sent nothing for {idle:g} s "
                                     "(TENSORPRESS_BODY_IDLE_TIMEOUT_S)") from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except RequestTimeout as exc:  # raised where no handler turned it into a response (JsonBodyLimit)
            if started:
                raise
            await send_problem(send, exc)
