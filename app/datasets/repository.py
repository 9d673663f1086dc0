from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.pagination import Page, paginate
from app.core.tenancy import owned
from app.models import Dataset, Job
from app.models.job import ACTIVE_STATES


def get(session: Session, tenant: str | None, dataset_id: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, *owned(Dataset, tenant)))


def list_page(session: Session, tenant: str | None, page: Page) -> tuple[list[Dataset], str | None]:
    return paginate(session, select(Dataset).where(*owned(Dataset, tenant)), Dataset, page)


def add(session: Session, dataset: Dataset) -> Dataset:
    session.add(dataset)
    session.flush()
    return dataset


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()


def used_by_active_job(session: Session, tenant: str, dataset_id: str) -> bool:
    active = session.scalars(select(Job.datasets).where(Job.tenant == tenant, Job.state.in_(ACTIVE_STATES)))
    return any(dataset_id in (datasets or {}).values() for datasets in active)
