"""``GET /metrics`` in Prometheus's text format.

Per API process: HTTP requests and their latency by route template, upload bytes. From the database at each
scrape, so they are right whatever number of API and worker processes there are: jobs by state, and the
queue wait (created → started) and step durations of the jobs that started in the last hour.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from app.core.db import session_scope
from app.models import Job
from app.models.base import utcnow

REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter("tensorpress_http_requests", "HTTP requests answered", ["method", "route", "status"],
                        registry=REGISTRY)
HTTP_LATENCY = Histogram("tensorpress_http_request_duration_seconds", "Time to answer an HTTP request",
                         ["method", "route"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UPLOAD_BYTES = Counter("tensorpress_upload_bytes", "Bytes received in model and dataset uploads", ["kind"],
                       registry=REGISTRY)
WINDOW = timedelta(hours=1)
WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))
STEP_BUCKETS = (1, 5, 30, 60, 300, 900, 3600, 6 * 3600, float("inf"))


class JobsCollector:
    def collect(self):
        since = utcnow() - WINDOW
        with session_scope() as session:
            states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            recent = session.execute(select(Job.created_at, Job.started_at, Job.steps)
                                     .where(Job.started_at >= since)).all()
        by_state = GaugeMetricFamily("tensorpress_jobs", "Jobs by state", labels=["state"])
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            by_state.add_metric([state], states.get(state, 0))
        yield by_state
        waits = [(started - created).total_seconds() for created, started, _ in recent]
        yield _histogram("tensorpress_job_queue_wait_seconds", "Queue wait of the jobs started in the last hour",
                         waits, WAIT_BUCKETS)
        durations = [(datetime.fromisoformat(s["finished_at"]) - datetime.fromisoformat(s["started_at"]))
                     .total_seconds() for _, _, steps in recent for s in steps
                     if s.get("started_at") and s.get("finished_at")]
        yield _histogram("tensorpress_step_duration_seconds", "Durations of the steps of the jobs started in the "
                         "last hour", durations, STEP_BUCKETS)


def _histogram(name: str, documentation: str, values: list[float], buckets: tuple[float, ...]):
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], [(str(b) if b != float("inf") else "+Inf", sum(v <= b for v in values)) for b in buckets],
                      sum(values))
    return family


REGISTRY.register(JobsCollector())


class HttpMetrics:
    """ASGI middleware: count and time every HTTP request by its route template (not its raw path)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status[0])).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
