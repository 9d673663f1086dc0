"""``Idempotency-Key`` on ``POST /v1/jobs`` and ``POST /v1/models`` (after the IETF draft of that name).

The first request with a key reserves it for the tenant in its own committed transaction, so a concurrent
request with the same key sees the reservation: it gets 409 while the first is in flight. The response
(status, body, ``Location``) is stored in the same transaction as the job or model it created, and a later
request with the same key and the same payload gets that response again (``Idempotent-Replayed: true``);
with another payload (or on the other endpoint), 422. A request that fails gives its key back. Keys expire
after ``TENSORPRESS_IDEMPOTENCY_TTL_S`` (24 h); a reservation whose request never finished (a crashed process)
is taken over after an hour.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.core.errors import BadRequest, Conflict, ValidationFailed
from app.core.settings import get_settings
from app.models import IdempotencyKey
from app.models.base import utcnow

HEADER = "Idempotency-Key"
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
IN_FLIGHT_STALE = timedelta(hours=1)


@dataclass(frozen=True)
class Reservation:
    tenant: str
    key: str
    endpoint: str
    earlier: IdempotencyKey | None = None  # a finished request with this key: replay it if the payload matches


def reserve(tenant: str, key: str, endpoint: str, fingerprint: str | None) -> Reservation:
    """Reserve ``key`` for this request, or find the finished one to replay. ``fingerprint`` (sha256 of the
    request) may be None when it is only known later (uploads: see :func:`same_request`)."""
    if not KEY.match(key):
        raise BadRequest(f"{HEADER} must be 1–255 printable ASCII characters without spaces")
    for _ in range(3):
        now = utcnow()
        try:
            with session_scope() as session:
                session.add(IdempotencyKey(tenant=tenant, key=key, endpoint=endpoint, fingerprint=fingerprint,
                                           expires_at=now + timedelta(seconds=get_settings().idempotency_ttl_s)))
            return Reservation(tenant, key, endpoint)
        except IntegrityError:
            pass
        with session_scope() as session:
            row = session.get(IdempotencyKey, (tenant, key))
            if row is None:
                continue  # given back meanwhile: try again
            if row.expires_at < now or (row.status is None and row.created_at < now - IN_FLIGHT_STALE):
                session.delete(row)
                continue
            if row.endpoint != endpoint or (fingerprint and row.fingerprint and row.fingerprint != fingerprint):
                raise _reused(key)
            if row.status is None:
                raise Conflict(f"a request with {HEADER} {key!r} is still in progress; retry when it is done")
            session.expunge(row)
            return Reservation(tenant, key, endpoint, earlier=row)
    raise Conflict(f"{HEADER} {key!r} is contended; retry")


def _reused(key: str) -> ValidationFailed:
    return ValidationFailed.at(["header", HEADER], f"{key!r} was used for a different request")


def same_request(reservation: Reservation, fingerprint: str) -> None:
    """422 unless the earlier request with this key had ``fingerprint``."""
    if reservation.earlier is not None and reservation.earlier.fingerprint != fingerprint:
        raise _reused(reservation.key)


def replay(earlier: IdempotencyKey) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true", **({"Location": earlier.location} if earlier.location else {})}
    return JSONResponse(earlier.response, status_code=earlier.status, headers=headers)


def complete(session: Session, reservation: Reservation, fingerprint: str, status: int, body: dict[str, Any],
             location: str | None) -> JSONResponse:
    """Store the response in the request's own transaction (it lands with what the request created)."""
    row = session.get(IdempotencyKey, (reservation.tenant, reservation.key))
    row.fingerprint, row.status, row.response, row.location = fingerprint, status, body, location
    return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)


@contextlib.contextmanager
def given_back_on_error(reservation: Reservation | None) -> Iterator[None]:
    """Delete this request's reservation if it fails, so that a retry with the same key can run."""
    try:
        yield
    except BaseException:
        if reservation is not None and reservation.earlier is None:
            with session_scope() as session:
                session.execute(delete(IdempotencyKey).where(IdempotencyKey.tenant == reservation.tenant,
                                                             IdempotencyKey.key == reservation.key))
        raise
