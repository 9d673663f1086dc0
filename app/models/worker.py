from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class Worker(Base):
    """A worker process as it last described itself in its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery hostname
    queues: Mapped[list[str]] = mapped_column(JSON)
    device: Mapped[dict[str, Any]] = mapped_column(JSON)  # cpu model, cores, gpus
    passes: Mapped[list[str]] = mapped_column(JSON)  # the passes whose libraries it has
    versions: Mapped[dict[str, str]] = mapped_column(JSON)
    # How its job processes are confined: {"active", "mechanism", "detail"} (app/core/confinement.py)
    confinement: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
