"""Per-tenant quotas (settings): bytes stored, and jobs queued or running."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import TooManyRequests
from app.core.settings import get_settings
from app.models import Artifact, Dataset, Job, Model
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


def check_active_jobs(session: Session, tenant: str) -> None:
    """429 when the tenant already has the most queued and running jobs allowed."""
    limit = get_settings().max_active_jobs
    active = session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant,
                                                                          Job.state.in_(ACTIVE_STATES)))
    if active >= limit:
        raise TooManyRequests(f"the tenant has {active} queued or running jobs, the most allowed "
                              "(TENSORPRESS_MAX_ACTIVE_JOBS); wait for one to finish",
                              headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_S)})
