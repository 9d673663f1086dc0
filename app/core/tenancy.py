"""Who is calling, what they may see, and how often they may ask.

With ``TENSORPRESS_AUTH=disabled`` (loopback only) every caller is the built-in tenant ``local``. With
``required``, every ``/v1`` request needs ``Authorization: Bearer tp_…``; a missing, malformed, unknown or
revoked key is a 401. Each resource belongs to a tenant; repositories filter by the caller's *scope*: its
tenant, or ``None`` (every tenant) for an admin key. Creations always belong to the caller's own tenant, and
ids inside request bodies resolve in it, so another tenant's id answers exactly like a missing one.

The operators' routes (``/metrics``, ``/v1/workers``) need an admin key when auth is required (403 without).

Requests per key are limited by a token bucket (``TENSORPRESS_RATE_LIMIT_PER_MINUTE``, the bucket holding a
minute's worth): past it, 429 with ``Retry-After``. The buckets live in the API process: with several API
processes each one applies the limit on its own.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from app.core.db import SessionDep
from app.core.errors import Forbidden, TooManyRequests, Unauthorized
from app.core.settings import get_settings

LOCAL_TENANT = "local"


@dataclass(frozen=True)
class Caller:
    tenant: str
    admin: bool = False
    key_id: str | None = None

    @property
    def scope(self) -> str | None:
        """Whose resources the caller may read and manage: its tenant's, or every tenant's (None)."""
        return None if self.admin else self.tenant


def owned(entity: Any, scope: str | None) -> list[Any]:
    """SQL conditions that keep ``entity`` rows to ``scope`` (none for an admin's scope)."""
    return [] if scope is None else [entity.tenant == scope]


class RateLimiter:
    """Token buckets by key: ``per_minute`` tokens, refilled continuously."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when)
        self.lock = threading.Lock()

    def wait_s(self, key: str, per_minute: int) -> float:
        """0 when the request may go ahead (taking a token), else the seconds until a token is back."""
        rate = per_minute / 60
        with self.lock:
            now = self.clock()
            tokens, when = self.buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - when) * rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / rate


LIMITER = RateLimiter()


def current_caller(request: Request, session: SessionDep) -> Caller:
    """FastAPI dependency of every ``/v1`` route: authenticate, then take a token from the caller's bucket."""
    from app.keys.service import authenticate

    settings = get_settings()
    if settings.auth == "disabled":
        caller = Caller(LOCAL_TENANT)
    else:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        record = authenticate(session, key.strip()) if scheme.lower() == "bearer" else None
        if record is None:
            raise Unauthorized("a valid API key is required: Authorization: Bearer tp_…",
                               headers={"WWW-Authenticate": 'Bearer realm="tensorpress"'})
        caller = Caller(record.tenant, record.admin, record.id)
    if settings.rate_limit_per_minute:
        wait = LIMITER.wait_s(caller.key_id or caller.tenant, settings.rate_limit_per_minute)
        if wait:
            raise TooManyRequests(f"more than {settings.rate_limit_per_minute} requests a minute with this key",
                                  headers={"Retry-After": str(math.ceil(wait))})
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def require_admin(caller: CallerDep) -> Caller:
    """Dependency of the operators' routes (``/metrics``, ``/v1/workers``): every tenant's job counts and the
    workers' host names are not a tenant's to read when auth is required."""
    if get_settings().auth != "disabled" and not caller.admin:
        raise Forbidden("this route needs an admin key (tensorpress keys create --admin)")
    return caller


def _tenant(caller: CallerDep) -> str:
    return caller.tenant


def _scope(caller: CallerDep) -> str | None:
    return caller.scope


TenantDep = Annotated[str, Depends(_tenant)]  # the owner of what the request creates
ScopeDep = Annotated[str | None, Depends(_scope)]  # whose resources the request may read or manage
