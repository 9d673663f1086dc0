"""The worker's Celery application: ``celery -A workers.celery_app worker -Q cpu`` (or ``tensorpress worker``)."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.core.db import get_engine
from app.core.queue import get_celery

celery = get_celery()
celery.conf.imports = ("workers.tasks",)
_stop_heartbeat = []


@worker_ready.connect
def _started(sender=None, **_) -> None:
    from workers import heartbeat
    from workers.recovery import start_loop

    queues = sorted(q.name for q in sender.task_consumer.queues)
    _stop_heartbeat.append(heartbeat.start(sender.hostname, queues))
    start_loop()


@worker_shutdown.connect
def _stopped(sender=None, **_) -> None:
    from workers import heartbeat

    for stop in _stop_heartbeat:
        stop.set()
    if sender is not None:
        heartbeat.remove(sender.hostname)


@worker_process_init.connect
def _fresh_connections(**_) -> None:
    # A forked child must not use the parent's pooled database connections.
    get_engine().dispose(close=False)
