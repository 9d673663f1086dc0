from __future__ import annotations

import pytest

from tests.app.test_jobs_api import submit


def beat(worker_id: str, queues: list[str], passes: list[str]) -> None:
    from app.core.db import session_scope
    from app.worker_registry import repository

    with session_scope() as session:
        repository.beat(session, worker_id, queues=queues, device={"cpu": "test", "gpus": []}, passes=passes,
                        versions={"onnxruntime": "x"})


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_jobs_wait_with_a_reason_until_a_worker_serves_their_queue(client, uploaded_model):
    assert client.get("/v1/workers").json() == {"items": []}
    job = submit(client, uploaded_model["id"]).json()
    assert job["waiting_reason"] == "waiting for a cpu worker: none is live (GET /v1/workers)"
    beat("cpu-1", ["cpu"], ["quantize.dynamic"])
    [worker] = client.get("/v1/workers").json()["items"]
    assert worker["id"] == "cpu-1" and worker["queues"] == ["cpu"] and worker["passes"] == ["quantize.dynamic"]
    assert submit(client, uploaded_model["id"]).json()["waiting_reason"] is None
    cuda = submit(client, uploaded_model["id"], target={"device": "cuda"}).json()
    assert cuda["queue"] == "gpu" and cuda["waiting_reason"].startswith("waiting for a gpu worker")
    plan = client.post("/v1/jobs?dry_run=true", json={"model_id": uploaded_model["id"], "preset": "cpu-int8",
                                                      "target": {"device": "cuda"}}).json()
    assert plan["queue"] == "gpu" and plan["waiting_reason"].startswith("waiting for a gpu worker")


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_pass_availability_follows_the_live_workers(client, uploaded_model):
    beat("cpu-1", ["cpu"], ["export.onnx"])
    passes = {p["name"]: p for p in client.get("/v1/passes").json()["items"]}
    assert passes["export.onnx"]["available"] is True
    assert passes["quantize.dynamic"]["available"] is False
    assert "no live cpu worker has what quantize.dynamic needs" in passes["quantize.dynamic"]["unavailable_reason"]
    refused = submit(client, uploaded_model["id"])
    assert refused.status_code == 422 and "cannot run here" in refused.json()["errors"][0]["msg"]


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)
def test_each_worker_says_how_its_job_processes_are_confined(client):
    from app.core.db import session_scope
    from app.worker_registry import repository
    from workers.heartbeat import describe

    with session_scope() as session:
        repository.beat(session, "w@host", **describe(["cpu"]))
    [worker] = client.get("/v1/workers").json()["items"]
    confinement = worker["confinement"]
    # This project's machines offer Landlock ABI >= 6 and seccomp (../shared/FACTS.md): confinement is complete.
    assert confinement["active"] is True and confinement["detail"] is None
    assert "Landlock ABI" in confinement["mechanism"] and "seccomp" in confinement["mechanism"]
