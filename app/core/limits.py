"""The JSON body limit: every request body except the streamed model and dataset uploads is held to
``TENSORPRESS_MAX_JSON_BYTES`` before any parsing; past it, 413 problem+json."""

from __future__ import annotations

import json

from app.core.errors import PROBLEM_JSON, PayloadTooLarge
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
            problem = PayloadTooLarge(f"the request body exceeds {limit} bytes (TENSORPRESS_MAX_JSON_BYTES)")
            payload = json.dumps(problem.to_problem()).encode()
            await send({"type": "http.response.start", "status": 413, "headers": [
                (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": payload})
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
