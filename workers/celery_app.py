"""The worker's Celery application: ``celery -A workers.celery_app worker -Q cpu`` (or ``tensorpress worker``)."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_ready

from app.core.db import get_engine
from app.core.queue import get_celery

celery = get_celery()
celery.conf.imports = ("workers.tasks",)


@worker_ready.connect
def _start_recovery(**_) -> None:
    from workers.recovery import start_loop

    start_loop()


@worker_process_init.connect
def _fresh_connections(**_) -> None:
    # A forked child must not use the parent's pooled database connections.
    get_engine().dispose(close=False)
