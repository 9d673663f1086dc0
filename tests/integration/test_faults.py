"""Faults with real processes: workers killed with SIGKILL, duplicate deliveries, Redis and PostgreSQL
restarted under load. Jobs finish exactly once and no artifact is left without its row (or the reverse)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests import factories
from tests.conftest import IN_CI, REDIS_URL
from tests.integration.test_distributed import wait_for
from tests.workers.jobs import upload_data
from tests.workers.passes.test_pytorch_passes import upload_torchscript

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]
FAST_RECOVERY = {"TENSORPRESS_LEASE_S": "3", "TENSORPRESS_RESEND_AFTER_S": "2"}


class Workers:
    """`tensorpress worker` processes, each in its own process group (so SIGKILL takes its job child too)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.procs = log_dir, []

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"],
                                env={**os.environ, **FAST_RECOVERY}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker*.log")))


@pytest.fixture
def workers(env, redis_broker, tmp_path, monkeypatch):
    for name, value in FAST_RECOVERY.items():
        monkeypatch.setenv(name, value)
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def training_job(client, cnn):
    x_train, y_train, _, _ = factories.digits()
    model_id = upload_torchscript(client, cnn)
    training = upload_data(client, input=x_train, labels=y_train)

    def submit(epochs: int) -> str:
        response = client.post("/v1/jobs", json={"model_id": model_id, "datasets": {"training": training}, "steps": [
            {"pass": "prune.magnitude", "params": {"sparsity": 0.3}},
            {"pass": "train.finetune", "params": {"epochs": epochs}}]})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    return submit


def finished(client, job_id: str, timeout: float, workers: Workers) -> dict:
    def done():
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    try:
        return wait_for(done, timeout, f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(client.get(f"/v1/jobs/{job_id}/logs").text + workers.logs()) from None


def one_set_of_artifacts(client, job: dict, env: Path) -> None:
    assert sorted(a["step"] for a in job["artifacts"]) == list(range(len(job["steps"])))
    stored = {p.name for p in (env / "artifacts" / "artifacts").iterdir()}
    assert stored == {a["id"] for a in job["artifacts"]}  # no bytes of an earlier attempt are left


def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_once(client, workers, training_job, env):
    first = workers.start()
    job_id = training_job(epochs=100)  # tens of seconds on an idle machine; its second attempt runs them all
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["current_step"] == 1, 300, "step 1 to start")
    wait_for(lambda: "epoch 1/" in client.get(f"/v1/jobs/{job_id}/logs").text, 300, "training to start")
    workers.kill(first)  # no goodbye: its lease just stops being renewed
    workers.start()
    job = finished(client, job_id, 1800, workers)
    assert job["state"] == "succeeded" and job["attempt"] == 2, client.get(f"/v1/jobs/{job_id}/logs").text
    assert "expired during attempt 1" in client.get(f"/v1/jobs/{job_id}/logs").text
    one_set_of_artifacts(client, job, env)


def test_a_duplicate_delivery_runs_the_job_once(client, workers, training_job, env):
    from app.core.queue import send_job

    workers.start()
    workers.start()
    job_id = training_job(epochs=20)
    send_job(job_id, "cpu")  # the same task delivered twice, to two workers
    job = finished(client, job_id, 600, workers)
    logs = client.get(f"/v1/jobs/{job_id}/logs").text
    assert job["state"] == "succeeded" and job["attempt"] == 1 and logs.count("attempt 1 started") == 1
    one_set_of_artifacts(client, job, env)


def test_jobs_queued_when_redis_restarts_all_complete(client, workers, uploaded_model, env):
    ids = [client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [{"pass": "quantize.dynamic"}],
                                         "target": {"batch_sizes": [n]}}).json()["id"] for n in (1, 2, 3)]
    restart_redis()  # without persistence: the three messages are gone
    assert redis.Redis.from_url(REDIS_URL).llen("cpu") == 0
    workers.start()
    for job_id in ids:
        job = finished(client, job_id, 600, workers)
        assert job["state"] == "succeeded" and job["attempt"] == 1
        assert "sent again" in client.get(f"/v1/jobs/{job_id}/logs").text


def test_a_postgresql_restart_mid_job_does_not_fail_it(client, workers, training_job, env):
    workers.start()
    job_id = training_job(epochs=60)
    wait_for(lambda: "epoch 2/" in client.get(f"/v1/jobs/{job_id}/logs").text, 300, "training to start")
    restart_postgresql()
    job = finished(client, job_id, 1800, workers)
    assert job["state"] == "succeeded" and job["attempt"] == 1, client.get(f"/v1/jobs/{job_id}/logs").text
    one_set_of_artifacts(client, job, env)


def test_sigterm_hands_the_running_job_back_and_another_worker_runs_it(client, workers, training_job, env):
    first = workers.start()
    job_id = training_job(epochs=150)
    wait_for(lambda: "epoch 1/" in client.get(f"/v1/jobs/{job_id}/logs").text, 300, "training to start")
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)  # the main process only: Celery's warm shutdown
    first.wait(timeout=180)
    assert time.monotonic() - started < 30  # it did not wait for 150 epochs
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["attempt"] == 0 and job["artifacts"] == []
    assert "handed back by" in client.get(f"/v1/jobs/{job_id}/logs").text
    workers.start()
    job = finished(client, job_id, 1800, workers)
    assert job["state"] == "succeeded" and job["attempt"] == 1
    one_set_of_artifacts(client, job, env)


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], check=False,
                   capture_output=True, timeout=30)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True, timeout=30)
    wait_for(lambda: subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True).returncode == 0,
             120, "Redis to come back")


def restart_postgresql() -> None:
    if shutil.which("pg_ctlcluster") is None:
        message = "pg_ctlcluster is needed to restart PostgreSQL"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=300)
    wait_for(lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True).returncode
             == 0, 120, "PostgreSQL to come back")
