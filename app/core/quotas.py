"""Per-tenant quotas (settings): bytes stored, and jobs queued or running.

An upload is checked twice: when it starts (so one past what is left stops as soon as it passes it) and where
its row is added, against the usage at that moment. That last check and the one of active jobs are made with
the tenant's ``quota_locks`` row written first, in the transaction that adds the row: PostgreSQL locks that
row and SQLite takes its one write lock, so a concurrent decision waits for this one's commit and counts its
row. No burst of concurrent uploads or submissions gets past a quota.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.errors import PayloadTooLarge, TooManyRequests
from app.core.settings import get_settings
from app.models import Artifact, Dataset, Job, Model, QuotaLock
from app.models.base import utcnow
from app.models.job import ACTIVE_STATES

ACTIVE_JOBS_RETRY_AFTER_S = 30


def stored_bytes(session: Session, tenant: str) -> int:
    """Models, datasets and artifacts the tenant keeps."""
    return sum(session.scalar(select(func.coalesce(func.sum(table.size_bytes), 0)).where(table.tenant == tenant))
               for table in (Model, Dataset, Artifact))


def upload_limit(session: Session, tenant: str, limit: int, setting: str) -> tuple[int, str]:
    """The most bytes an upload may have: ``limit`` (named by ``setting``) or what is left of the tenant's
    storage quota, whichever is less; and what to say when an upload exceeds it."""
    quota = get_settings().max_stored_bytes
    left = max(0, quota - stored_bytes(session, tenant))
    if left < limit:
        return left, (f"the tenant's storage quota of {quota} bytes (TENSORPRESS_MAX_STORED_BYTES) has {left} bytes "
                      "left; delete models, datasets or jobs first")
    return limit, f"the upload exceeds the limit of {limit} bytes ({setting})"


def hold(session: Session, tenant: str) -> None:
    """Make the tenant's quota decisions one at a time until this transaction ends."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    session.execute(insert(QuotaLock).values(tenant=tenant, taken_at=now)
                    .on_conflict_do_update(index_elements=["tenant"], set_={"taken_at": now}))


def claim_storage(session: Session, tenant: str, size: int) -> None:
    """413 unless ``size`` more bytes fit in the tenant's storage quota; call just before the row is added."""
    hold(session, tenant)
    quota = get_settings().max_stored_bytes
    left = max(0, quota - stored_bytes(session, tenant))
    if size > left:
        raise PayloadTooLarge(f"the tenant's storage quota of {quota} bytes (TENSORPRESS_MAX_STORED_BYTES) has "
                              f"{left} bytes left, the upload has {size}; delete models, datasets or jobs first")


def check_active_jobs(session: Session, tenant: str) -> None:
    """429 when the tenant already has the most queued and running jobs allowed; call just before the job is
    added."""
    hold(session, tenant)
    limit = get_settings().max_active_jobs
    active = session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant,
                                                                          Job.state.in_(ACTIVE_STATES)))
    if active >= limit:
        raise TooManyRequests(f"the tenant has {active} queued or running jobs, the most allowed "
                              "(TENSORPRESS_MAX_ACTIVE_JOBS); wait for one to finish",
                              headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_S)})
