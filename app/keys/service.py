"""API keys: ``tp_<id>_<secret>``. The id finds the record; only the secret's sha256 is stored and it is
compared in constant time. A key belongs to one tenant; an admin key may read and manage every tenant's
resources (what it creates belongs to its own tenant)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import ApiKey
from app.models.base import utcnow

KEY = re.compile(r"^tp_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(session: Session, tenant: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key for ``tenant``; returns the record and the key, which is not stored anywhere."""
    if not TENANT.match(tenant):
        raise ValueError("a tenant name is 1–64 characters: lower-case letters, digits, '.', '_', '-'")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    record = ApiKey(id=key_id, tenant=tenant, admin=admin, secret_sha256=_digest(secret))
    session.add(record)
    session.flush()
    return record, f"tp_{key_id}_{secret}"


def list_all(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))


def revoke(session: Session, key_id: str) -> bool:
    result = session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return result.rowcount == 1


def authenticate(session: Session, key: str) -> ApiKey | None:
    """The live key record that ``key`` proves, else None."""
    match = KEY.match(key)
    record = session.get(ApiKey, match.group(1)) if match else None
    secret = match.group(2) if match else "-"
    valid = hmac.compare_digest(record.secret_sha256 if record else _digest("+"), _digest(secret))
    return record if record is not None and valid and record.revoked_at is None else None
