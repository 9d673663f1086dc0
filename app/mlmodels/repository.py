from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.core.pagination import Page, paginate
from app.core.tenancy import owned
from app.models import Job, Model
from app.models.job import ACTIVE_STATES


def get(session: Session, tenant: str | None, model_id: str) -> Model | None:
    return session.scalar(select(Model).where(Model.id == model_id, *owned(Model, tenant)))


def get_any(session: Session, model_id: str) -> Model | None:
    """The model behind an artifact: it may have been deleted since, which the caller handles."""
    return session.get(Model, model_id)


def list_page(session: Session, tenant: str | None, page: Page) -> tuple[list[Model], str | None]:
    return paginate(session, select(Model).where(*owned(Model, tenant)), Model, page)


def add(session: Session, model: Model) -> Model:
    session.add(model)
    session.flush()
    return model


def delete(session: Session, model: Model) -> None:
    session.delete(model)
    session.flush()


def used_by_active_job(session: Session, model_id: str) -> bool:
    return bool(session.scalar(select(exists().where(Job.model_id == model_id,
                                                       Job.state.in_(ACTIVE_STATES)))))
