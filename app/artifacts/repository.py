from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Artifact


def get(session: Session, tenant: str, artifact_id: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant == tenant))
