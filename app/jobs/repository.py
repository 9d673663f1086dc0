"""Every SQL statement about jobs. Updates that race with workers are conditional single statements."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.pagination import Page, paginate
from app.core.tenancy import owned
from app.models import Artifact, Job, JobLog
from app.models.base import utcnow
from app.models.job import ACTIVE_STATES


def get(session: Session, tenant: str | None, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, *owned(Job, tenant)))


def get_many(session: Session, job_ids: list[str]) -> list[Job]:
    """These jobs, whoever owns them (the caller was checked when it asked to follow them)."""
    return list(session.scalars(select(Job).where(Job.id.in_(job_ids)))) if job_ids else []


def list_page(session: Session, tenant: str | None, page: Page, state: str | None) -> tuple[list[Job], str | None]:
    stmt = select(Job).where(*owned(Job, tenant))
    if state:
        stmt = stmt.where(Job.state == state)
    return paginate(session, stmt, Job, page)


def model_id_of(session: Session, job_id: str) -> str:
    return session.scalar(select(Job.model_id).where(Job.id == job_id))


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def mark_sent(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.enqueued_at.is_(None)).values(enqueued_at=utcnow()))


def cancel_queued(session: Session, job: Job) -> bool:
    """Cancel a job no worker has taken yet; False if a worker took it in the meantime."""
    steps = [{**s, "status": "cancelled"} for s in job.steps]
    result = session.execute(update(Job).where(Job.id == job.id, Job.state == "queued")
                             .values(state="cancelled", finished_at=utcnow(), steps=steps,
                                     waiting_reason=None))
    session.refresh(job)
    return result.rowcount == 1


def request_cancel(session: Session, job: Job) -> None:
    session.execute(update(Job).where(Job.id == job.id, Job.state == "running").values(cancel_requested=True))
    session.refresh(job)


def logs(session: Session, job_id: str) -> list[JobLog]:
    return list(session.scalars(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)))


def add_log(session: Session, job_id: str, message: str, level: str = "info") -> None:
    session.add(JobLog(job_id=job_id, message=message, level=level))


# --- the worker side: claiming and fenced writes -------------------------------------------------------

def claim(session: Session, job_id: str, owner: str, expires_at: datetime) -> int | None:
    """Take a queued job for ``owner``; returns the new fencing token. A running job whose lease expired is
    not taken here, even when its task is delivered again: recovery (:mod:`workers.recovery`) decides what
    becomes of it (queued again, or ended for its cancel, its time limit or its last attempt) and logs why."""
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None:
        return None
    token = job.lease_token + 1
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_token == job.lease_token, Job.state == "queued")
        .values(state="running", lease_owner=owner, lease_token=token, lease_expires_at=expires_at,
                attempt=Job.attempt + 1, started_at=job.started_at or now, waiting_reason=None))
    return token if result.rowcount == 1 else None


def fenced_update(session: Session, job_id: str, token: int, **values: Any) -> bool:
    """Write ``values`` only if ``token`` still owns the job; False means the lease was lost."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.lease_token == token,
                                               Job.state == "running").values(**values))
    return result.rowcount == 1


def requests(session: Session, job_id: str) -> tuple[bool, bool]:
    """Whether the job's cancellation, and whether handing it back (its worker is stopping), was requested."""
    row = session.execute(select(Job.cancel_requested, Job.handback_requested).where(Job.id == job_id)).first()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def request_handbacks(session: Session, worker: str) -> int:
    """Ask the jobs that ``worker``'s processes run to hand themselves back (it is shutting down)."""
    return session.execute(update(Job).where(Job.state == "running", Job.lease_owner.like(f"{worker}:%"))
                           .values(handback_requested=True)).rowcount


def expire_leases(session: Session, worker: str) -> int:
    """End the leases of the jobs ``worker``'s processes held (they were killed): recovery takes them at once."""
    return session.execute(update(Job).where(Job.state == "running", Job.lease_owner.like(f"{worker}:%"))
                           .values(lease_expires_at=utcnow() - timedelta(seconds=1))).rowcount


def cached_result(session: Session, tenant: str, cache_key: str, job_id: str) -> Job | None:
    """The latest succeeded job of ``tenant`` with ``cache_key``, other than ``job_id``."""
    return session.scalar(select(Job).where(Job.tenant == tenant, Job.cache_key == cache_key, Job.id != job_id,
                                            Job.state == "succeeded").order_by(Job.finished_at.desc()).limit(1))


def source_of_active_job(session: Session, job_id: str) -> bool:
    """Whether a queued or running job starts from one of ``job_id``'s artifacts."""
    artifacts = select(Artifact.id).where(Artifact.job_id == job_id)
    return session.scalar(select(Job.id).where(Job.source_artifact_id.in_(artifacts),
                                               Job.state.in_(ACTIVE_STATES)).limit(1)) is not None


def finished_before(session: Session, moment: datetime, limit: int = 100) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.state.in_(("succeeded", "failed", "cancelled")),
                                                  Job.finished_at < moment).limit(limit)))


def delete_artifacts(session: Session, job_id: str, steps: list[int] | None = None,
                     keep: str | None = None) -> list[str]:
    """Delete the job's artifact records (of ``steps`` only, if given; never ``keep``); returns their storage
    prefixes (to delete after commit)."""
    stmt = select(Artifact).where(Artifact.job_id == job_id, Artifact.id != (keep or ""))
    if steps is not None:
        stmt = stmt.where(Artifact.step.in_(steps))
    artifacts = session.scalars(stmt).all()
    for artifact in artifacts:
        session.delete(artifact)
    return [f"artifacts/{artifact.id}" for artifact in artifacts]
