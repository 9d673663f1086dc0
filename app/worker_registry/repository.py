from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import Worker
from app.models.base import utcnow


def live(session: Session, since: datetime) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.last_seen >= since).order_by(Worker.id)))


def beat(session: Session, worker_id: str, **values: Any) -> None:
    worker = session.get(Worker, worker_id)
    if worker is None:
        session.add(Worker(id=worker_id, last_seen=utcnow(), **values))
    else:
        for key, value in values.items():
            setattr(worker, key, value)
        worker.last_seen = utcnow()


def remove(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def get(session: Session, worker_id: str) -> Worker | None:
    return session.get(Worker, worker_id)
