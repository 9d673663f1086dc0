"""Live workers, as their heartbeats describe them; what the deployment can run and where a job can go."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.core.settings import get_settings
from app.models import Worker
from app.models.base import utcnow
from app.worker_registry import repository
from workers.passes import REGISTRY


def live(session: Session) -> list[Worker]:
    """Workers that reported within three heartbeats."""
    return repository.live(session, utcnow() - timedelta(seconds=3 * get_settings().heartbeat_s))


def pass_unavailable(name: str, workers: list[Worker]) -> str | None:
    """Why this deployment cannot run a pass: no live worker has its libraries (or, with no worker live, this
    machine lacks them), else None."""
    spec = REGISTRY[name]
    serving = [w for w in workers if spec.queue in w.queues]
    if any(name in w.passes for w in serving):
        return None
    if not workers:
        return spec.unavailable_reason()
    if not serving:
        return None  # no worker of that queue is live now: the job waits (waiting_reason), it is not refused
    return f"no live {spec.queue} worker has what {name} needs ({spec.unavailable_reason() or 'see GET /v1/workers'})"


def waiting_reason(queue: str, workers: list[Worker]) -> str | None:
    if any(queue in w.queues for w in workers):
        return None
    return f"waiting for a {queue} worker: none is live (GET /v1/workers)"
