from __future__ import annotations

from sqlalchemy.orm import Session

from app.artifacts import repository
from app.core.errors import NotFound
from app.models import Artifact


def get(session: Session, tenant: str | None, artifact_id: str) -> Artifact:
    artifact = repository.get(session, tenant, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact
