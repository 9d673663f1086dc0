from __future__ import annotations

from fastapi import APIRouter, Depends

from app.core.db import SessionDep
from app.core.tenancy import require_admin
from app.worker_registry import service
from app.worker_registry.schemas import WorkerList

router = APIRouter(prefix="/v1/workers", tags=["workers"], dependencies=[Depends(require_admin)])


@router.get("", response_model=WorkerList)
def list_workers(session: SessionDep):
    """Live workers: queues, device, the passes they can run, library versions."""
    return {"items": service.live(session)}
