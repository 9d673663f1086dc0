"""The worker's Celery application: ``celery -A workers.celery_app worker -Q cpu`` (or ``tensorpress worker``)."""

from __future__ import annotations

import logging
import os
import resource
import shutil

from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from app.core.db import get_engine
from app.core.queue import get_celery
from app.core.settings import get_settings

celery = get_celery()
celery.conf.imports = ("workers.tasks",)
_stop_heartbeat = []


@setup_logging.connect
def _logging(**_) -> None:  # Celery leaves logging to us: the same format as the API's, with job ids
    from app.core.logs import configure_logging

    configure_logging()


@worker_ready.connect
def _started(sender=None, **_) -> None:
    from workers import heartbeat
    from workers.recovery import start_loop

    queues = sorted(q.name for q in sender.task_consumer.queues)
    _stop_heartbeat.append(heartbeat.start(sender.hostname, queues))
    start_loop()


@worker_shutting_down.connect
def _hand_back_jobs(sender=None, **_) -> None:
    """SIGTERM (a warm shutdown): the jobs this worker runs stop at their next check and go back to the queue,
    instead of holding the shutdown for hours or being lost to the SIGKILL that would follow."""
    from app.core.db import session_scope
    from app.jobs.repository import request_handbacks

    try:
        with session_scope() as session:
            count = request_handbacks(session, str(sender))
        if count:
            logging.getLogger(__name__).warning("shutting down: %d job(s) asked to hand themselves back", count)
    except Exception:  # the database is away: the leases will expire and the jobs be retried
        logging.getLogger(__name__).exception("could not ask the running jobs to hand themselves back")


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
    """Each job runs in its own forked child (one task per child), which never loads a user model itself: its
    confined child does (``workers.executor``), and inherits these limits — what a hostile model can take from
    the machine. CPU time: the job time limit times the cores. Address space: ``TENSORPRESS_JOB_MEMORY_BYTES``
    (default 80% of RAM) — not on GPU machines, where CUDA reserves far more address space than it uses. No
    core dumps. A lower CPU priority (``TENSORPRESS_JOB_NICE``), so that the API and its status polls stay
    responsive on a machine a job keeps busy. The settings are read (and cached) before the environment, which
    holds credentials, is emptied of TensorPress's variables: nothing the job runs needs them again."""
    settings = get_settings()
    cores = os.cpu_count() or 1
    resource.setrlimit(resource.RLIMIT_CPU, (settings.job_time_limit_s * cores, settings.job_time_limit_s * cores
                                             + 60))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(settings.job_nice)
    if shutil.which("nvidia-smi") is None:
        memory = settings.job_memory_bytes or int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    for name in [n for n in os.environ if n.startswith("TENSORPRESS_")]:
        del os.environ[name]
