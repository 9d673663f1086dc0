"""Recovery, run by every worker: no job stays ``running`` forever, and no job waits on a message that was
never sent.

- A running job whose lease expired (its worker died or hung) is queued again and re-sent, or failed with the
  reason once it has used all its attempts. One whose cancel was pending ends ``cancelled``, and one that ran
  past its own ``time_limit_s`` ends ``failed`` for its time limit: neither is ever run again. The conditional
  update names the old fencing token, so when several workers recover at once only one wins.
- A queued job whose task was never sent (the broker was down when it was submitted: ``enqueued_at`` is null)
  is sent; one sent more than ``TENSORPRESS_RESEND_AFTER_S`` ago while its broker queue is empty (the broker
  lost the message: Redis restarted without persistence, a queue was purged) is sent again. A duplicate
  message is harmless: the lease lets only one delivery run the job.
- Finished jobs past ``TENSORPRESS_RETENTION_DAYS`` are deleted with their artifacts.
- Webhook deliveries that are due (new ones whose first attempt was missed, retries) are sent.
- Queued jobs say why they wait: ``waiting_reason`` follows the live workers (a gpu job whose only gpu worker
  died says so again; one whose worker came back says nothing).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import select, update

from app.core.db import session_scope
from app.core.errors import JobFailed, WorkerLost
from app.core.queue import QUEUES, send_job, waiting_messages
from app.core.settings import get_settings
from app.core.storage import get_store
from app.jobs import repository as jobs
from app.jobs.service import dispatch
from app.jobs.service import remove as remove_job
from app.models import Job
from app.models.base import utcnow
from app.webhooks import service as webhooks
from app.worker_registry import service as worker_registry

log = logging.getLogger(__name__)
UNSENT_GRACE_S = 5


def recover_once() -> dict[str, int]:
    now = utcnow()
    counts = {"requeued": 0, "cancelled": 0, "failed": 0, "resent": 0, "lost": 0}
    with session_scope() as session:
        live = worker_registry.live(session)
        for queue in QUEUES:
            reason = worker_registry.waiting_reason(queue, live)
            session.execute(update(Job).where(Job.state == "queued", Job.queue == queue,
                                              Job.waiting_reason.is_distinct_from(reason))
                            .values(waiting_reason=reason))
    with session_scope() as session:
        expired = list(session.scalars(select(Job).where(Job.state == "running", Job.lease_expires_at < now)))
        unsent = [tuple(row) for row in session.execute(select(Job.id, Job.queue).where(
            Job.state == "queued", Job.enqueued_at.is_(None),
            Job.created_at < now - timedelta(seconds=UNSENT_GRACE_S)))]
    for job in expired:
        outcome, values, message = _after_lost_lease(job, now)
        with session_scope() as session:
            taken = session.execute(update(Job).where(Job.id == job.id, Job.lease_token == job.lease_token,
                                                      Job.state == "running", Job.lease_expires_at < now)
                                    .values(**values)).rowcount == 1
            if taken:
                jobs.add_log(session, job.id, f"lease of {job.lease_owner} expired during attempt {job.attempt}; "
                             + message, "warning")
                if outcome != "requeued":
                    webhooks.record_by_id(session, job.id, values["state"])
        if taken:
            counts[outcome] += 1
            if outcome == "requeued":
                unsent.append((job.id, job.queue))
    for job_id, queue in unsent:
        try:
            dispatch(job_id, queue)
            counts["resent"] += 1
        except Exception:
            log.exception("could not send job %s; will try again", job_id)
    for job_id, queue in _lost(now):
        try:
            send_job(job_id, queue)
            with session_scope() as session:
                session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
                jobs.add_log(session, job_id, "its message was missing from the broker; sent again", "warning")
            counts["lost"] += 1
        except Exception:
            log.exception("could not send job %s again; will try again", job_id)
    counts["webhooks"] = webhooks.deliver_due()
    counts["expired"] = expire(now)
    return counts


def _after_lost_lease(job: Job, now) -> tuple[str, dict, str]:
    """What becomes of a running job whose worker stopped renewing its lease: (count key, new column values,
    log message). A pending cancel and the job's own time limit are honoured before any retry."""
    limit = min(job.time_limit_s or get_settings().job_time_limit_s, get_settings().job_time_limit_s)
    began = [datetime.fromisoformat(step["started_at"]) for step in job.steps if step.get("started_at")]
    ran_s = (now - min(began)).total_seconds() if began else 0.0  # this attempt's steps (each attempt resets them)
    ended = {"finished_at": now, "lease_expires_at": None}
    if job.cancel_requested:
        return "cancelled", {**ended, "state": "cancelled"}, "cancelled as requested"
    if ran_s > limit:
        return "failed", {**ended, "state": "failed", "error": JobFailed(
            f"the job ran past its time limit of {limit} s ({ran_s:.0f} s) and its worker stopped renewing its "
            f"lease ({job.lease_owner}); it is not run again", step=job.current_step,
            exception="TimeLimitExceeded").to_problem()}, "failing the job: past its time limit"
    if job.attempt < job.max_attempts:
        return "requeued", {"state": "queued", "enqueued_at": None, "lease_owner": None,
                            "lease_expires_at": None}, "queued again"
    return "failed", {**ended, "state": "failed", "error": WorkerLost(
        f"the worker running attempt {job.attempt} of {job.max_attempts} stopped renewing its lease "
        f"({job.lease_owner}); no attempts left", step=job.current_step).to_problem()}, \
        "failing the job: no attempts left"


def expire(now) -> int:
    """Delete finished jobs past ``TENSORPRESS_RETENTION_DAYS`` with their artifacts, a batch at a time."""
    days = get_settings().retention_days
    if not days:
        return 0
    removed = 0
    with session_scope() as session:
        old = [job.id for job in jobs.finished_before(session, now - timedelta(days=days))]
    for job_id in old:
        try:
            with session_scope() as session:
                job = session.get(Job, job_id)
                if job is not None:
                    remove_job(session, get_store(), job)
                    removed += 1
        except Exception:  # one that cannot go yet (an active job starts from it) does not stop the rest
            log.info("job %s is past retention but cannot be deleted yet", job_id, exc_info=True)
    return removed


def _lost(now) -> list[tuple[str, str]]:
    """Queued jobs sent a while ago whose broker queue is empty: their messages were lost."""
    cutoff = now - timedelta(seconds=get_settings().resend_after_s)
    lost = []
    for queue in QUEUES:
        if waiting_messages(queue) != 0:
            continue
        with session_scope() as session:
            lost += [tuple(row) for row in session.execute(select(Job.id, Job.queue).where(
                Job.state == "queued", Job.queue == queue, Job.enqueued_at < cutoff))]
    return lost


def start_loop() -> threading.Event:
    """Run :func:`recover_once` now (a worker that replaces a dead one takes its jobs at once) and every half
    lease, in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    interval = max(get_settings().lease_s / 2, 1)

    def loop() -> None:
        while True:
            try:
                counts = recover_once()
                if any(counts.values()):
                    log.warning("recovery: %s", counts)
            except Exception:
                log.exception("recovery pass failed")
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="tensorpress-recovery", daemon=True).start()
    return stop
