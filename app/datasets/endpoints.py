from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.core.db import SessionDep
from app.core.pagination import PageDep
from app.core.quotas import upload_limit
from app.core.settings import get_settings
from app.core.storage import get_store
from app.core.tenancy import ScopeDep, TenantDep
from app.core.uploads import UPLOAD_BODY, stage_upload
from app.datasets import service
from app.datasets.schemas import DatasetList, DatasetRead

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

@router.post("", status_code=201, response_model=DatasetRead, openapi_extra=UPLOAD_BODY)
async def upload_dataset(request: Request, session: SessionDep, tenant: TenantDep,
                         name: str | None = Query(None, max_length=255)):
    """Upload an .npz dataset: arrays named after the model's inputs plus an optional `labels` array."""
    store = get_store()
    limit = await run_in_threadpool(upload_limit, session, tenant, get_settings().max_dataset_bytes,
                                    "TENSORPRESS_MAX_DATASET_BYTES")
    staged, name = await stage_upload(request, store, "dataset", name, limit)
    return await run_in_threadpool(service.create, session, store, tenant, name, staged)


@router.get("", response_model=DatasetList)
def list_datasets(page: PageDep, session: SessionDep, scope: ScopeDep):
    """List datasets, newest first."""
    items, next_cursor = service.list_page(session, scope, page)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: str, session: SessionDep, scope: ScopeDep):
    """Get one dataset."""
    return service.get(session, scope, dataset_id)


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, scope: ScopeDep):
    """Delete a dataset (refused while a queued or running job uses it)."""
    service.delete(session, get_store(), scope, dataset_id)
    return Response(status_code=204)
