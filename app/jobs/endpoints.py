from __future__ import annotations

import hashlib
from typing import Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.core import idempotency
from app.core.db import SessionDep
from app.core.pagination import PageDep
from app.core.storage import get_store
from app.core.tenancy import ScopeDep, TenantDep
from app.jobs import events, report, service
from app.jobs.schemas import JobCreate, JobList, JobPlan, JobRead, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobRead | JobPlan,
             responses={200: {"model": JobPlan, "description": "dry_run=true: the resolved plan"}})
def create_job(payload: JobCreate, response: Response, session: SessionDep, tenant: TenantDep,
               dry_run: bool = Query(False, description="Validate and answer the resolved plan; run nothing"),
               idempotency_key: str | None = Header(None, description="Retry-safe submission: the same key and "
                                                    "payload answer the first response again (24 h)")):
    """Submit a job; answers 202 with its Location once recorded (200 with the plan for dry_run=true)."""
    if dry_run:
        response.status_code = 200
        return JobPlan.model_validate(service.plan(session, tenant, payload))
    reservation = fingerprint = None
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(payload.model_dump_json(by_alias=True).encode()).hexdigest()
        reservation = idempotency.reserve(tenant, idempotency_key, "POST /v1/jobs", fingerprint)
        if reservation.earlier is not None:
            return idempotency.replay(reservation.earlier)
    with idempotency.given_back_on_error(reservation):
        job = service.create(session, tenant, payload)
        body = JobRead.model_validate(job).model_dump(mode="json", by_alias=True)
        if job.webhook:
            body["webhook"]["secret"] = job.webhook["secret"]  # shown once
        location = f"/v1/jobs/{job.id}"
        if reservation is None:
            return JSONResponse(body, status_code=202, headers={"Location": location})
        return idempotency.complete(session, reservation, fingerprint, 202, body, location)


@router.get("", response_model=JobList)
def list_jobs(page: PageDep, session: SessionDep, scope: ScopeDep,
              state: JobState | None = Query(None)):
    """List jobs, newest first, optionally filtered by state."""
    items, next_cursor = service.list_page(session, scope, page, state)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: str, session: SessionDep, scope: ScopeDep):
    """Get one job with its steps, metrics and artifacts."""
    return service.get(session, scope, job_id)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, session: SessionDep, scope: ScopeDep):
    """Delete a finished job with its artifacts (409 while it is queued or running: cancel it first)."""
    service.delete(session, get_store(), scope, job_id)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, session: SessionDep, scope: ScopeDep):
    """Cancel a job: at once when queued, at the next check when running."""
    return service.cancel(session, scope, job_id)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "state, step, progress, "
                                                                                "metrics events, then done"}})
def job_events(job_id: str, request: Request, session: SessionDep, scope: ScopeDep, tenant: TenantDep):
    """Follow a job as server-sent events; the stream ends with a `done` event carrying the final job. Open
    streams are capped per tenant and in all (429 with Retry-After beyond)."""
    service.get(session, scope, job_id)
    hub = request.app.state.events
    return StreamingResponse(events.stream(hub, hub.subscribe(job_id, tenant), request),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: str, session: SessionDep, scope: ScopeDep):
    """The job's log as text: what each step did, warnings, the traceback of a failure."""
    return service.logs_text(session, scope, job_id)


@router.get("/{job_id}/report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}, "application/json": {}},
                             "description": "A self-contained HTML page, or its data with format=json"}})
def job_report(job_id: str, session: SessionDep, scope: ScopeDep,
               format: Literal["html", "json"] = Query("html", description="html: a page that works offline; "
                                                                          "json: the same data")):
    """The job's report: original against result (size, latency, memory, accuracy), size and latency against
    the budget's metric, the candidates and their Pareto front for goal jobs, and a timeline of the steps."""
    job = service.get(session, scope, job_id)
    content = report.data(job, service.model_of(session, job))
    if format == "json":
        return JSONResponse(content)
    return HTMLResponse(report.render(content), headers=report.SECURITY_HEADERS)
