"""Inspect an upload in a sandboxed child (``workers.inspection``); the API never loads ML libraries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core import errors
from app.core.sandbox import run_json
from app.core.settings import get_settings

_STATUS = {400: errors.BadRequest, 415: errors.UnsupportedMediaType, 422: errors.UnprocessableUpload}


def inspect_model(path: Path, declared_inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    settings = get_settings()
    options = {"limits": settings.archive_limits, "inputs": declared_inputs,
               "allow_unconfined": settings.allow_unconfined}
    result = run_json("workers.inspection", [str(path), json.dumps(options)],
                      memory_bytes=settings.inspect_memory_bytes, timeout_s=settings.inspect_timeout_s)
    if not result.get("ok"):
        raise _STATUS.get(result.get("status"), errors.UnprocessableUpload)(result.get("detail", "refused"))
    return result
