"""Celery tasks: thin adapters that take ids, never objects, and hand the work on."""

from __future__ import annotations

import os
import socket

from app.core.queue import RUN_JOB
from workers.celery_app import celery
from workers.runner import run_job


@celery.task(name=RUN_JOB, bind=True)
def run(self, job_id: str) -> None:
    """Run one job. A second delivery of the same job is harmless: the lease lets only one owner run it."""
    owner = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}:{self.request.id}"
    run_job(job_id, owner)
