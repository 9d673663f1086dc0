"""The worker's Celery application: ``celery -A workers.celery_app worker -Q cpu`` (or ``tensorpress worker``)."""

from __future__ import annotations

import os
import resource
import shutil

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.core.db import get_engine
from app.core.queue import get_celery
from app.core.settings import get_settings

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
    confine_job_process()


def confine_job_process() -> None:
    """Each job runs in its own forked child (one task per child): limit what a hostile model can take from
    the machine. CPU time: the job time limit times the cores. Address space: ``TENSORPRESS_JOB_MEMORY_BYTES``
    (default 80% of RAM) — not on GPU machines, where CUDA reserves far more address space than it uses. No
    core dumps. The settings are read (and cached) before the environment, which holds credentials, is
    emptied of TensorPress's variables: nothing the job runs needs them again."""
    settings = get_settings()
    cores = os.cpu_count() or 1
    resource.setrlimit(resource.RLIMIT_CPU, (settings.job_time_limit_s * cores, settings.job_time_limit_s * cores
                                             + 60))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if shutil.which("nvidia-smi") is None:
        memory = settings.job_memory_bytes or int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    for name in [n for n in os.environ if n.startswith("TENSORPRESS_")]:
        del os.environ[name]
