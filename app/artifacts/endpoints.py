from __future__ import annotations

from fastapi import APIRouter, Request

from app.artifacts import service
from app.artifacts.schemas import ArtifactRead
from app.core.db import SessionDep
from app.core.downloads import download
from app.core.storage import get_store
from app.core.tenancy import ScopeDep

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_model=ArtifactRead)
def get_artifact(artifact_id: str, session: SessionDep, scope: ScopeDep):
    """Get one artifact's record."""
    return service.get(session, scope, artifact_id)


@router.get("/{artifact_id}/download")
def download_artifact(artifact_id: str, request: Request, session: SessionDep, scope: ScopeDep):
    """Download an artifact (Range requests, ETag is the sha256)."""
    artifact = service.get(session, scope, artifact_id)
    return download(request, get_store(), artifact.storage_key, artifact.sha256, artifact.filename)
