from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.core.db import SessionDep
from app.core.downloads import download
from app.core.pagination import PageDep
from app.core.settings import get_settings
from app.core.storage import get_store
from app.core.tenancy import TenantDep
from app.core.uploads import receive
from app.mlmodels import service
from app.mlmodels.schemas import ModelList, ModelRead

router = APIRouter(prefix="/v1/models", tags=["models"])

UPLOAD_BODY = {"requestBody": {"content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}},
    "required": True}}


def clean_name(name: str | None, fallback: str) -> str:
    """A display name from user input: no directories, no control characters, at most 255 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", (name or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:255] or fallback


@router.post("", status_code=201, response_model=ModelRead, openapi_extra=UPLOAD_BODY)
async def upload_model(request: Request, session: SessionDep, tenant: TenantDep,
                       name: str | None = Query(None, max_length=255)):
    """Upload a model (raw body with ?name=, or multipart field `file`); answers once stored and inspected."""
    store = get_store()
    staged = store.stage(get_settings().max_upload_bytes)
    try:
        filename = await receive(request, staged)
    except BaseException:
        staged.discard()
        raise
    return await run_in_threadpool(service.create, session, store, tenant,
                                   clean_name(name or filename, "model"), staged)


@router.get("", response_model=ModelList)
def list_models(page: PageDep, session: SessionDep, tenant: TenantDep):
    """List models, newest first."""
    items, next_cursor = service.list_page(session, tenant, page)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{model_id}", response_model=ModelRead)
def get_model(model_id: str, session: SessionDep, tenant: TenantDep):
    """Get one model."""
    return service.get(session, tenant, model_id)


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, session: SessionDep, tenant: TenantDep):
    """Delete a model and its file (refused while a queued or running job uses it)."""
    service.delete(session, get_store(), tenant, model_id)
    return Response(status_code=204)


@router.get("/{model_id}/download")
def download_model(model_id: str, request: Request, session: SessionDep, tenant: TenantDep):
    """Download the model file as uploaded."""
    model = service.get(session, tenant, model_id)
    suffix = model.storage_key.rsplit(".", 1)[-1]
    filename = model.name if model.name.endswith(f".{suffix}") else f"{model.name}.{suffix}"
    return download(request, get_store(), model.storage_key, model.sha256, filename)
