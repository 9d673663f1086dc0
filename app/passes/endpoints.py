from __future__ import annotations

from fastapi import APIRouter

from app.core.db import SessionDep
from app.worker_registry import service as worker_registry
from workers.passes import REGISTRY
from workers.passes.presets import PRESETS

router = APIRouter(prefix="/v1", tags=["passes"])


@router.get("/passes")
def list_passes(session: SessionDep):
    """Every registered pass: formats, parameter schema, whether this deployment can run it, queue."""
    live = worker_registry.live(session)
    items = []
    for spec in sorted(REGISTRY.values(), key=lambda s: s.name):
        reason = worker_registry.pass_unavailable(spec.name, live)
        items.append({"name": spec.name, "description": spec.description, "accepts": list(spec.accepts),
                      "produces": spec.produces, "params_schema": spec.params.model_json_schema(),
                      "datasets": list(spec.datasets), "available": reason is None,
                      "unavailable_reason": reason, "queue": spec.queue})
    return {"items": items}


@router.get("/presets")
def list_presets():
    """Named recipes; `POST /v1/jobs?dry_run=true` with a preset shows the steps it picks for a model."""
    return {"items": [{"name": p.name, "description": p.description, "datasets": list(p.datasets)}
                      for p in sorted(PRESETS.values(), key=lambda p: p.name)]}
