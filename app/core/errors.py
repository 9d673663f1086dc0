"""Domain errors and their problem+json rendering (RFC 9457).

Services raise these; one handler turns each into ``application/problem+json``. The tree::

    TensorPressError (500)
     ├── BadRequest (400)
     ├── Unauthorized (401)
     ├── NotFound (404)                 an id in the path that is missing (or not the caller's)
     ├── Conflict (409)                 the resource is in a state that forbids the request
     ├── PreconditionFailed (412)
     ├── PayloadTooLarge (413)
     ├── UnsupportedMediaType (415)     an upload in a format we do not take
     ├── TooManyRequests (429)          a rate limit or the active-jobs quota, with Retry-After
     ├── RangeNotSatisfiable (416)
     ├── ValidationFailed (422)         with ``errors: [{"loc": [...], "msg": ...}]``
     ├── UnprocessableUpload (422)      a model file in a known format that cannot be used
     └── ServiceUnavailable (503)
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class TensorPressError(Exception):
    status = 500
    title = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def type(self) -> str:
        return f"https://tensorpress.dev/problems/{self.title.lower().replace(' ', '-')}"

    def to_problem(self) -> dict[str, Any]:
        return {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail,
                **self.extra}


class JobFailed(TensorPressError):
    """A job's own failure, kept as its ``error`` (not an HTTP answer)."""
    status, title = 500, "Job failed"


class WorkerLost(TensorPressError):
    """A job whose worker stopped renewing its lease on its last attempt, kept as its ``error``."""
    status, title = 500, "Worker lost"


class BadRequest(TensorPressError):
    status, title = 400, "Bad request"


class Unauthorized(TensorPressError):
    status, title = 401, "Unauthorized"


class Forbidden(TensorPressError):
    status, title = 403, "Forbidden"


class NotFound(TensorPressError):
    status, title = 404, "Not found"


class Conflict(TensorPressError):
    status, title = 409, "Conflict"


class PreconditionFailed(TensorPressError):
    status, title = 412, "Precondition failed"


class RequestTimeout(TensorPressError):
    status, title = 408, "Request timeout"


class PayloadTooLarge(TensorPressError):
    status, title = 413, "Payload too large"


class TooManyRequests(TensorPressError):
    status, title = 429, "Too many requests"


class HeadersTooLarge(TensorPressError):
    status, title = 431, "Request header fields too large"


class UnsupportedMediaType(TensorPressError):
    status, title = 415, "Unsupported media type"


class RangeNotSatisfiable(TensorPressError):
    status, title = 416, "Range not satisfiable"


class ValidationFailed(TensorPressError):
    status, title = 422, "Validation failed"

    def __init__(self, errors: list[dict[str, Any]], detail: str | None = None) -> None:
        detail = detail or "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors)
        super().__init__(detail, errors=errors)

    @classmethod
    def at(cls, loc: list[str | int], msg: str) -> ValidationFailed:
        return cls([{"loc": loc, "msg": msg}])


class UnprocessableUpload(TensorPressError):
    """An upload in a known format that cannot be used (invalid, or too costly to inspect)."""

    status, title = 422, "Unprocessable upload"


class ServiceUnavailable(TensorPressError):
    status, title = 503, "Service unavailable"


def _loc(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problem_response(error: TensorPressError) -> JSONResponse:
    return JSONResponse(error.to_problem(), status_code=error.status, media_type=PROBLEM_JSON,
                        headers=error.headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(TensorPressError)
    async def _domain(_: Request, exc: TensorPressError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [p for p in e["loc"] if p != "body"] or ["body"], "msg": e["msg"]}
                  for e in exc.errors()]
        return problem_response(ValidationFailed(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = TensorPressError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status, error.title = exc.status_code, _reason(exc.status_code)
        return problem_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(TensorPressError("An unexpected error occurred; it has been logged."))


PROBLEM_SCHEMA = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["loc", "msg"], "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"}}}}},
    "description": "RFC 9457 problem details; validation failures add errors[] naming each field"}


def document_problems(schema: dict) -> dict:
    """Every operation's errors in the OpenAPI document as they are: application/problem+json (FastAPI's
    default 422 schema describes a body this service never sends)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for schema_name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(schema_name, None)
    problem = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses["422"] = {"description": "Validation failed", **problem}
            responses["default"] = {"description": "An error (4xx), as problem details", **problem}
    return schema


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
