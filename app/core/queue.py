"""The Celery application shared by the API (which only sends ``jobs.run``) and the workers.

The broker carries nothing but "job X is ready": the database is the source of truth, so a lost message is
re-sent from the database. With ``filesystem://`` (the embedded default) messages are files in the data dir,
which works across processes on one machine with no server; :mod:`app.core.broker` writes and claims them
atomically.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Queue

from app.core.broker import TRANSPORT as FILE_TRANSPORT
from app.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
RUN_JOB = "jobs.run"
QUEUES = ("cpu", "gpu")


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "cpu",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        # A fresh child per job: memory a model leaves behind (allocator caches, CUDA contexts) goes with it.
        "worker_max_tasks_per_child": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "task_time_limit": settings.job_time_limit_s + 60,
    }
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport"] = FILE_TRANSPORT
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.05,
        }
    elif settings.broker_url.startswith("redis"):
        # Redelivery of an unacknowledged message after a worker dies; longer than any job attempt.
        config["broker_transport_options"] = {"visibility_timeout": settings.job_time_limit_s + 600}
    return config


@lru_cache
def get_celery() -> Celery:
    app = Celery("tensorpress")
    app.conf.update(celery_config(get_settings()))
    return app


def send_job(job_id: str, queue: str) -> None:
    get_celery().send_task(RUN_JOB, args=[job_id], queue=queue, routing_key=queue)


def waiting_messages(queue: str) -> int | None:
    """Messages waiting in the broker's ``queue`` (a queue the broker does not know holds none); None when
    the broker cannot be asked."""
    from amqp.exceptions import ChannelError

    try:
        with get_celery().connection_for_write() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except ChannelError as exc:
        if "404" in str(exc):  # kombu's Redis transport: no binding for the queue, so nothing in it
            return 0
        log.warning("could not count the messages in queue %s", queue, exc_info=True)
        return None
    except Exception:
        log.warning("could not count the messages in queue %s", queue, exc_info=True)
        return None


def check_broker() -> None:
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
