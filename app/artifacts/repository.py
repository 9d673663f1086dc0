from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.tenancy import owned
from app.models import Artifact


def get(session: Session, tenant: str | None, artifact_id: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.id == artifact_id, *owned(Artifact, tenant)))
