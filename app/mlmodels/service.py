"""Uploaded models: store, inspect, list, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.core.db import on_commit
from app.core.errors import Conflict, NotFound
from app.core.pagination import Page
from app.core.quotas import claim_storage
from app.core.storage import StagedFile, Store
from app.mlmodels import repository
from app.mlmodels.inspection import inspect_model
from app.models import Model
from app.models.base import new_id

EXTENSIONS = {"onnx": "onnx", "torchscript": "pt", "torch_export": "pt2"}


def create(session: Session, store: Store, tenant: str, name: str, staged: StagedFile,
           declared_inputs: list[dict[str, Any]] | None = None) -> Model:
    """Inspect a fully received upload and record it; the staged file is consumed either way."""
    try:
        staged.finish()
        info = inspect_model(staged.path, declared_inputs)
        model_id = new_id()
        ext = "zip" if info["details"].get("archive") else EXTENSIONS[info["format"]]
        key = f"models/{model_id}/model.{ext}"
        store.commit(staged, key)
    except BaseException:
        staged.discard()
        raise
    on_commit(session, None, rollback=lambda: store.delete_prefix(f"models/{model_id}"))
    claim_storage(session, tenant, staged.size)
    return repository.add(session, Model(
        id=model_id, tenant=tenant, name=name, format=info["format"], size_bytes=staged.size,
        sha256=staged.sha256, storage_key=key, inputs=info["inputs"], outputs=info["outputs"],
        parameters=info["parameters"], details=info["details"]))


def get(session: Session, tenant: str | None, model_id: str) -> Model:
    model = repository.get(session, tenant, model_id)
    if model is None:
        raise NotFound(f"model {model_id} not found")
    return model


def list_page(session: Session, tenant: str | None, page: Page) -> tuple[list[Model], str | None]:
    return repository.list_page(session, tenant, page)


def delete(session: Session, store: Store, tenant: str | None, model_id: str) -> None:
    model = get(session, tenant, model_id)
    if repository.used_by_active_job(session, model_id):
        raise Conflict(f"model {model_id} is used by a queued or running job; cancel it first")
    repository.delete(session, model)
    on_commit(session, lambda: store.delete_prefix(f"models/{model_id}"))
