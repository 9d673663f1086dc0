"""A job's live events, as server-sent events (``GET /v1/jobs/{id}/events``).

The database is the source of truth and workers on any machine write to it, so the stream polls the job's
record every ``TENSORPRESS_EVENTS_POLL_S`` and sends what changed: ``state`` (state, attempt, waiting reason),
``step`` (a step whose status or metrics changed), ``progress``, ``metrics`` (the original's, then the
result's), and a final ``done`` carrying the whole job, after which the stream closes. A client that connects
to a finished job gets its state, metrics and ``done`` at once. A comment line every 15 s keeps proxies from
closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.core.db import session_scope
from app.core.settings import get_settings
from app.jobs import repository
from app.jobs.schemas import JobRead
from app.models.job import TERMINAL_STATES

KEEPALIVE_S = 15.0


def snapshot(tenant: str | None, job_id: str) -> dict[str, Any] | None:
    with session_scope() as session:
        job = repository.get(session, tenant, job_id)
        return None if job is None else JobRead.model_validate(job).model_dump(mode="json", by_alias=True)


def changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[tuple[str, Any]]:
    """The events that take a client from ``before`` (None: it has seen nothing) to ``now``."""
    before = before or {}
    events: list[tuple[str, Any]] = []
    state = {key: now[key] for key in ("state", "attempt", "waiting_reason", "current_step")}
    if state != {key: before.get(key) for key in state}:
        events.append(("state", state))
    old_steps = {s["index"]: s for s in before.get("steps", [])}
    for step in now["steps"]:
        old = old_steps.get(step["index"], {})
        if (step["status"], step["metrics"]) != (old.get("status"), old.get("metrics")) and (
                before or step["status"] != "pending"):
            events.append(("step", step))
    if now["progress"] != before.get("progress"):
        events.append(("progress", {"progress": now["progress"], "current_step": now["current_step"]}))
    if now["metrics"] and now["metrics"] != before.get("metrics"):
        events.append(("metrics", now["metrics"]))
    if now["state"] in TERMINAL_STATES:
        events.append(("done", now))
    return events


async def stream(tenant: str | None, job_id: str, request: Request) -> AsyncIterator[str]:
    poll = get_settings().events_poll_s
    before: dict[str, Any] | None = None
    sequence = 0
    quiet_since = time.monotonic()
    while True:
        now = await run_in_threadpool(snapshot, tenant, job_id)
        if now is None:  # deleted while watched
            return
        for kind, data in changes(before, now):
            sequence += 1
            quiet_since = time.monotonic()
            yield f"id: {sequence}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        if now["state"] in TERMINAL_STATES:
            return
        before = now
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)
