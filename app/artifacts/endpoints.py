from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from app.artifacts import service
from app.artifacts.schemas import ArtifactRead
from app.core.db import get_session
from app.core.downloads import download
from app.core.storage import get_store
from app.core.tenancy import current_tenant

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_model=ArtifactRead)
def get_artifact(artifact_id: str, session: Session = Depends(get_session),
                 tenant: str = Depends(current_tenant)):
    """Get one artifact's record."""
    return service.get(session, tenant, artifact_id)


@router.get("/{artifact_id}/download")
def download_artifact(artifact_id: str, request: Request, session: Session = Depends(get_session),
                      tenant: str = Depends(current_tenant)):
    """Download an artifact (Range requests, ETag is the sha256)."""
    artifact = service.get(session, tenant, artifact_id)
    return download(request, get_store(), artifact.storage_key, artifact.sha256, artifact.filename)
