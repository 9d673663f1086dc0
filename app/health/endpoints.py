from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.core.db import get_engine, session_scope
from app.core.errors import ServiceUnavailable
from app.core.metrics import REGISTRY
from app.core.queue import QUEUES, check_broker
from app.core.storage import get_store
from app.core.tenancy import require_admin
from app.worker_registry import service as worker_registry

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_admin)])
def metrics():
    """Prometheus text format: jobs by state, queue wait, step durations, upload bytes, HTTP latency (every
    tenant's: an admin key when auth is required)."""
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


def _database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _workers() -> dict[str, int]:
    with session_scope() as session:
        live = worker_registry.live(session)
    return {queue: sum(queue in w.queues for w in live) for queue in QUEUES}


@router.get("/readyz")
async def readyz(request: Request):
    """Readiness: the database, the broker and the artifact store answer; live workers counted per queue
    (under ``tensorpress up``, not ready while none is live)."""
    checks: dict[str, str | dict[str, int]] = {}
    for name, check in (("database", _database), ("broker", check_broker), ("store", get_store().check)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    problems = [f"{k} {v}" for k, v in checks.items() if v != "ok"]
    try:
        checks["workers"] = await run_in_threadpool(_workers)
        if request.app.state.needs_worker and not any(checks["workers"].values()):
            problems.append("no worker is live yet (tensorpress up starts one and restarts it if it dies)")
    except Exception as exc:
        checks["workers"] = f"failed: {type(exc).__name__}: {exc}"[:300]
        problems.append(f"workers {checks['workers']}")
    if problems:
        raise ServiceUnavailable("not ready: " + ", ".join(problems), checks=checks)
    return {"status": "ok", "checks": checks}
