from __future__ import annotations

from datetime import timedelta

from tests.app.test_jobs_api import broker_messages, submit
from tests.workers.test_runner import job_row, run, set_job


def test_expired_lease_is_requeued_and_resent(client, uploaded_model, env):
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    assert job_row(job_id).enqueued_at is not None
    set_job(job_id, state="running", lease_owner="dead-worker", lease_token=1, attempt=1,
            lease_expires_at=utcnow() - timedelta(seconds=5))
    assert recover_once() == {"requeued": 1, "cancelled": 0, "failed": 0, "resent": 1, "lost": 0, "webhooks": 0,
                              "expired": 0}
    job = job_row(job_id)
    assert job.state == "queued" and job.attempt == 1 and job.enqueued_at is not None
    assert len(broker_messages(env)) == 2
    assert "lease of dead-worker expired during attempt 1; queued again" in client.get(f"/v1/jobs/{job_id}/logs").text
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempt"] == 2


def test_last_attempt_lost_fails_the_job_with_the_reason(client, uploaded_model):
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, state="running", lease_owner="dead-worker", lease_token=3, attempt=3,
            lease_expires_at=utcnow() - timedelta(seconds=5))
    assert recover_once()["failed"] == 1
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"]["title"] == "Worker lost"
    assert "no attempts left" in job["error"]["detail"]
    assert recover_once() == {"requeued": 0, "cancelled": 0, "failed": 0, "resent": 0, "lost": 0, "webhooks": 0,
                              "expired": 0}


def test_a_lost_job_with_a_pending_cancel_ends_cancelled_and_is_not_run_again(client, uploaded_model, env):
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, state="running", lease_owner="dead-worker", lease_token=1, attempt=1, cancel_requested=True,
            lease_expires_at=utcnow() - timedelta(seconds=5))
    counts = recover_once()
    assert counts["cancelled"] == 1 and counts["requeued"] == 0 and counts["resent"] == 0
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["attempt"] == 1 and job["finished_at"] is not None
    assert len(broker_messages(env)) == 1  # only the original submission


def test_a_lost_job_past_its_own_time_limit_fails_for_it(client, uploaded_model, env):
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"], time_limit_s=20).json()["id"]
    steps = [{**step, "status": "running", "started_at": (utcnow() - timedelta(seconds=60)).isoformat()}
             for step in job_row(job_id).steps]
    set_job(job_id, state="running", lease_owner="dead-worker", lease_token=1, attempt=1, steps=steps,
            started_at=utcnow() - timedelta(hours=1), lease_expires_at=utcnow() - timedelta(seconds=5))
    assert recover_once()["failed"] == 1
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["attempt"] == 1
    assert job["error"]["exception"] == "TimeLimitExceeded" and "time limit of 20 s" in job["error"]["detail"]
    assert len(broker_messages(env)) == 1


def test_a_job_whose_task_was_never_sent_is_sent(client, uploaded_model, env):
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, enqueued_at=None, created_at=utcnow() - timedelta(minutes=1))
    assert recover_once()["resent"] == 1
    assert job_row(job_id).enqueued_at is not None and len(broker_messages(env)) == 2


def test_waiting_reasons_follow_the_live_workers(client, uploaded_model):
    from tests.app.test_workers_api import beat
    from workers.recovery import recover_once

    beat("gpu-1", ["gpu"], ["quantize.dynamic"])
    cuda = submit(client, uploaded_model["id"], target={"device": "cuda"}).json()["id"]
    assert job_row(cuda).waiting_reason is None
    from app.core.db import session_scope
    from app.worker_registry import repository

    with session_scope() as session:  # the gpu worker stops
        repository.remove(session, "gpu-1")
    recover_once()
    assert job_row(cuda).waiting_reason.startswith("waiting for a gpu worker")
    beat("gpu-2", ["gpu"], ["quantize.dynamic"])
    recover_once()
    assert job_row(cuda).waiting_reason is None
