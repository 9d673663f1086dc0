from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.core import idempotency
from app.core.db import SessionDep
from app.core.downloads import download
from app.core.errors import ValidationFailed
from app.core.pagination import PageDep
from app.core.quotas import upload_limit
from app.core.settings import get_settings
from app.core.storage import get_store
from app.core.tenancy import ScopeDep, TenantDep
from app.core.uploads import UPLOAD_BODY, stage_upload
from app.mlmodels import service
from app.mlmodels.schemas import ModelList, ModelRead, TensorSpec

router = APIRouter(prefix="/v1/models", tags=["models"])

INPUTS_HELP = ('TorchScript only: the inputs of forward() as JSON, e.g. [{"name": "x", "dtype": "float32", '
               '"shape": ["batch", 1, 8, 8]}]; a string names a dynamic dimension')


def parse_inputs(raw: str) -> list[dict[str, Any]]:
    try:
        return [TensorSpec.model_validate(item).model_dump() for item in json.loads(raw)]
    except (ValueError, TypeError) as exc:
        raise ValidationFailed.at(["query", "inputs"], f"not a JSON list of input specs: {exc}"[:500]) from exc


@router.post("", status_code=201, response_model=ModelRead, openapi_extra=UPLOAD_BODY)
async def upload_model(request: Request, session: SessionDep, tenant: TenantDep,
                       name: str | None = Query(None, max_length=255),
                       inputs: str | None = Query(None, max_length=8192, description=INPUTS_HELP),
                       idempotency_key: str | None = Header(None, description="Retry-safe upload: the same key "
                                                            "and bytes answer the first response again (24 h)")):
    """Upload a model (raw body with ?name=, or multipart field `file`); answers once stored and inspected."""
    declared = parse_inputs(inputs) if inputs else None
    store = get_store()
    reservation = (await run_in_threadpool(idempotency.reserve, tenant, idempotency_key, "POST /v1/models", None)
                   if idempotency_key is not None else None)
    with idempotency.given_back_on_error(reservation):
        limit = await run_in_threadpool(upload_limit, session, tenant, get_settings().max_upload_bytes,
                                        "TENSORPRESS_MAX_UPLOAD_BYTES")
        staged, name = await stage_upload(request, store, "model", name, limit)
        if reservation is None:
            return await run_in_threadpool(service.create, session, store, tenant, name, staged, declared)
        fingerprint = hashlib.sha256(json.dumps([name, declared, staged.sha256]).encode()).hexdigest()
        if reservation.earlier is not None:
            staged.discard()
            idempotency.same_request(reservation, fingerprint)
            return idempotency.replay(reservation.earlier)
        model = await run_in_threadpool(service.create, session, store, tenant, name, staged, declared)
        body = ModelRead.model_validate(model).model_dump(mode="json")
        return idempotency.complete(session, reservation, fingerprint, 201, body, f"/v1/models/{model.id}")


@router.get("", response_model=ModelList)
def list_models(page: PageDep, session: SessionDep, scope: ScopeDep):
    """List models, newest first."""
    items, next_cursor = service.list_page(session, scope, page)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{model_id}", response_model=ModelRead)
def get_model(model_id: str, session: SessionDep, scope: ScopeDep):
    """Get one model."""
    return service.get(session, scope, model_id)


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, session: SessionDep, scope: ScopeDep):
    """Delete a model and its file (refused while a queued or running job uses it)."""
    service.delete(session, get_store(), scope, model_id)
    return Response(status_code=204)


@router.get("/{model_id}/download")
def download_model(model_id: str, request: Request, session: SessionDep, scope: ScopeDep):
    """Download the model file as uploaded."""
    model = service.get(session, scope, model_id)
    suffix = model.storage_key.rsplit(".", 1)[-1]
    filename = model.name if model.name.endswith(f".{suffix}") else f"{model.name}.{suffix}"
    return download(request, get_store(), model.storage_key, model.sha256, filename)
