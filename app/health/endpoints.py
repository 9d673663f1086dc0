from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.core.db import get_engine
from app.core.errors import ServiceUnavailable
from app.core.metrics import REGISTRY
from app.core.queue import check_broker
from app.core.storage import get_store

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics():
    """Prometheus text format: jobs by state, queue wait, step durations, upload bytes, HTTP latency."""
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


def _database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz")
async def readyz():
    """Readiness: the database, the broker and the artifact store all answer."""
    checks: dict[str, str] = {}
    for name, check in (("database", _database), ("broker", check_broker), ("store", get_store().check)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    if any(v != "ok" for v in checks.values()):
        raise ServiceUnavailable("not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
                                 checks=checks)
    return {"status": "ok", "checks": checks}
