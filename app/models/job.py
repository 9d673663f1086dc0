from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.artifact import Artifact
from app.models.base import Base, UTCDateTime, new_id, utcnow

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class Job(Base):
    """A recipe run on one model. The database, not the broker, is the source of truth for its state.

    A worker owns a running job through its lease: ``lease_owner``, ``lease_token`` (a fencing token that
    grows with every claim; writes carrying an older token are refused) and ``lease_expires_at``.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_tenant_cache_key", "tenant", "cache_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="local")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    model_id: Mapped[str] = mapped_column(String(32))
    source_artifact_id: Mapped[str | None] = mapped_column(String(32), default=None)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    alternatives: Mapped[list[list[dict[str, Any]]]] = mapped_column(JSON, default=list)
    goal: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    time_limit_s: Mapped[int | None] = mapped_column(Integer, default=None)
    datasets: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    current_step: Mapped[int | None] = mapped_column(Integer, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    waiting_reason: Mapped[str | None] = mapped_column(Text, default=None)
    cache_key: Mapped[str | None] = mapped_column(String(64), default=None)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    regressed: Mapped[bool] = mapped_column(Boolean, default=False)
    regressions: Mapped[list[str]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    handback_requested: Mapped[bool] = mapped_column(Boolean, default=False)  # its worker is shutting down
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    artifacts: Mapped[list[Artifact]] = relationship(order_by=Artifact.step, lazy="selectin",
                                                     cascade="all, delete-orphan")


class JobLog(Base):
    """One line of a job's log: what each step did, warnings, the traceback of a failure."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
