"""File downloads with ``ETag: "<sha256>"``, single ``Range`` requests, ``If-Range`` and ``If-None-Match``."""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from app.core.errors import RangeNotSatisfiable
from app.core.storage import Store

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def download(request: Request, store: Store, key: str, sha256: str, filename: str,
             media_type: str = "application/octet-stream") -> Response:
    if store.presigned:  # S3: the client fetches the bytes from the storage itself
        return RedirectResponse(store.presigned_url(key, filename), status_code=307, headers={"ETag": f'"{sha256}"'})
    size = store.size(key)
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes",
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename, safe='')}"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    start, end, status = 0, size - 1, 200
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted and (if_range is None or if_range == etag):
        match = _RANGE.match(wanted.strip())
        if match and (match[1] or match[2]):  # one range; anything else is served whole, as RFC 9110 allows
            if match[1]:
                start = int(match[1])
                end = min(int(match[2]), size - 1) if match[2] else size - 1
            else:
                start = max(size - int(match[2]), 0)
            if start >= size or start > end:
                raise RangeNotSatisfiable(f"range {wanted} is outside 0-{size - 1}",
                                          headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    body = store.read_range(key, start, end) if size else iter([b""])
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)
