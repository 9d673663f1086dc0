from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class QuotaLock(Base):
    """One row per tenant, written first by every quota decision so that a tenant's decisions are made one at
    a time (see ``app.core.quotas``)."""

    __tablename__ = "quota_locks"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
