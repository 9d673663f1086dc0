"""A job's live events, as server-sent events (``GET /v1/jobs/{id}/events``).

The database is the source of truth and workers on any machine write to it. One poller per API process
(:class:`Hub`) reads every watched job in one query every ``TENSORPRESS_EVENTS_POLL_S`` and hands each stream
the job's latest record, so a thousand streams cost one query a poll, not a thousand, and hold no database
connection or thread while they wait. Streams are capped per tenant (``TENSORPRESS_EVENTS_MAX_PER_TENANT``)
and in all (``TENSORPRESS_EVENTS_MAX_TOTAL``): past either, 429 with Retry-After.

Each stream sends what changed: ``state`` (state, attempt, waiting reason), ``step`` (a step whose status or
metrics changed), ``progress``, ``metrics`` (the original's, then the result's), and a final ``done`` carrying
the whole job, after which the stream closes. A client that connects to a finished job gets its state, metrics
and ``done`` at once. A comment line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.core.db import session_scope
from app.core.errors import TooManyRequests
from app.core.settings import get_settings
from app.jobs import repository
from app.jobs.schemas import JobRead
from app.models.job import TERMINAL_STATES

log = logging.getLogger(__name__)
KEEPALIVE_S = 15.0


def snapshots(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The API representation of each of these jobs that still exists."""
    with session_scope() as session:
        return {job.id: JobRead.model_validate(job).model_dump(mode="json", by_alias=True)
                for job in repository.get_many(session, job_ids)}


class Subscription:
    """One stream's view of its job: the latest record the poller read (None once the job is gone)."""

    def __init__(self, job_id: str, tenant: str) -> None:
        self.job_id, self.tenant = job_id, tenant
        self.latest: dict[str, Any] | None = None
        self.started = False
        self.created = time.monotonic()
        self.fresh = asyncio.Event()

    def update(self, record: dict[str, Any] | None) -> None:
        self.latest = record
        self.fresh.set()


class Hub:
    """The event streams of one API process and the one task that polls their jobs. Streams subscribe from
    the endpoint's thread (so that a 429 is still a status) and start the poller from the event loop."""

    RETRY_AFTER_S = 5
    UNSTARTED_S = 60  # a subscription whose stream never began (its client left first) is dropped

    def __init__(self) -> None:
        self.subscriptions: set[Subscription] = set()
        self.lock = threading.Lock()
        self.task: asyncio.Task | None = None

    def subscribe(self, job_id: str, tenant: str) -> Subscription:
        settings = get_settings()
        with self.lock:
            mine = sum(s.tenant == tenant for s in self.subscriptions)
            if mine >= settings.events_max_per_tenant or len(self.subscriptions) >= settings.events_max_total:
                raise TooManyRequests(
                    f"too many open event streams ({mine} of this tenant's {settings.events_max_per_tenant}, "
                    f"{len(self.subscriptions)} of {settings.events_max_total} in all); close one, or poll "
                    "GET /v1/jobs/{id}", headers={"Retry-After": str(self.RETRY_AFTER_S)})
            subscription = Subscription(job_id, tenant)
            self.subscriptions.add(subscription)
        return subscription

    def start(self, subscription: Subscription) -> None:
        """From the event loop, as the stream begins: make sure the poller runs."""
        subscription.started = True
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:  # none, ended, or an old loop's
            self.task = loop.create_task(self._poll())

    def unsubscribe(self, subscription: Subscription) -> None:
        with self.lock:
            self.subscriptions.discard(subscription)

    async def _poll(self) -> None:
        poll = get_settings().events_poll_s
        while True:
            with self.lock:
                abandoned = {s for s in self.subscriptions
                             if not s.started and time.monotonic() - s.created > self.UNSTARTED_S}
                self.subscriptions -= abandoned
                watched = list(self.subscriptions)
            if not watched:
                return
            try:
                records = await run_in_threadpool(snapshots, sorted({s.job_id for s in watched}))
            except Exception:  # the database is away: the streams wait, the next poll tries again
                log.warning("event streams could not read their jobs", exc_info=True)
            else:
                for subscription in watched:
                    subscription.update(records.get(subscription.job_id))
            await asyncio.sleep(poll)


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


async def stream(hub: Hub, subscription: Subscription, request: Request) -> AsyncIterator[str]:
    before: dict[str, Any] | None = None
    sequence = 0
    hub.start(subscription)
    try:
        while True:
            try:
                await asyncio.wait_for(subscription.fresh.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                continue
            subscription.fresh.clear()
            now = subscription.latest
            if now is None:  # deleted while watched
                return
            for kind, data in changes(before, now):
                sequence += 1
                yield f"id: {sequence}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            if now["state"] in TERMINAL_STATES:
                return
            before = now
    finally:
        hub.unsubscribe(subscription)
