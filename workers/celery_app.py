"""The worker's Celery application: ``celery -A workers.celery_app worker -Q cpu`` (or ``tensorpress worker``)."""

from __future__ import annotations

from app.core.queue import get_celery

celery = get_celery()
celery.conf.imports = ("workers.tasks",)
