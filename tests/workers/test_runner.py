"""The pipeline runner, called directly as the Celery task would (no eager Celery)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np

from tests.app.test_jobs_api import submit
from tests.factories import onnx_mlp, run_onnx


def job_row(job_id: str):
    from app.core.db import session_scope
    from app.models import Job

    with session_scope() as session:
        return session.get(Job, job_id)


def set_job(job_id: str, **values) -> None:
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.models import Job

    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def run(job_id: str, owner: str = "test-worker") -> None:
    from workers.runner import run_job

    run_job(job_id, owner)


def test_quantize_dynamic_job_end_to_end(client, uploaded_model, mlp_bytes):
    job_id = submit(client, uploaded_model["id"], target={"batch_sizes": [1, 4]}).json()["id"]
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", client.get(f"/v1/jobs/{job_id}/logs").text
    assert job["attempt"] == 1 and job["progress"] == 1.0 and job["finished_at"]
    assert job["steps"][0]["status"] == "succeeded"
    assert job["steps"][0]["metrics"]["quantized_nodes"]["MatMulInteger"] == 3
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert original["size_bytes"] == len(mlp_bytes)
    assert result["size_bytes"] < 0.35 * original["size_bytes"]
    assert set(result["latency_ms"]) == {"1", "4"}
    assert all(result["latency_ms"][b]["p50"] <= result["latency_ms"][b]["p99"] for b in ("1", "4"))
    assert result["fidelity"]["cosine"] > 0.99 and result["fidelity"]["top1_agreement"] >= 0.75
    assert result["conditions"]["runtime"] == "onnxruntime" and result["conditions"]["threads"] >= 1

    [artifact] = job["artifacts"]
    assert artifact["step"] == 0 and artifact["format"] == "onnx"
    assert artifact["metadata"]["pass"] == "quantize.dynamic"
    assert client.get(f"/v1/artifacts/{artifact['id']}").json()["sha256"] == artifact["sha256"]
    download = client.get(f"/v1/artifacts/{artifact['id']}/download")
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == artifact["sha256"]
    assert download.headers["content-disposition"].startswith("attachment;")
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    expected, got = run_onnx(mlp_bytes, {"x": x})[0], run_onnx(download.content, {"x": x})[0]
    assert np.abs(expected - got).max() < 0.05 * np.abs(expected).max()
    logs = client.get(f"/v1/jobs/{job_id}/logs").text
    assert "step 0 quantize.dynamic succeeded" in logs and "attempt 1 started" in logs

    run(job_id)  # a second delivery after the job finished does nothing
    again = client.get(f"/v1/jobs/{job_id}").json()
    assert again["attempt"] == 1 and len(again["artifacts"]) == 1


def test_gemm_layers_are_rewritten_and_quantized(client):
    data = onnx_mlp(gemm=True)
    model = client.post("/v1/models?name=gemm", content=data, headers={"content-type": "application/octet-stream"})
    job_id = submit(client, model.json()["id"]).json()["id"]
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded"
    assert job["steps"][0]["metrics"]["quantized_nodes"]["MatMulInteger"] == 3
    assert job["metrics"]["result"]["size_bytes"] < 0.35 * len(data)
    assert "rewrote 3 constant-weight Gemm" in client.get(f"/v1/jobs/{job_id}/logs").text


def test_live_lease_makes_a_second_delivery_harmless(client, uploaded_model):
    from app.models.base import utcnow

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, state="running", lease_owner="other", lease_token=1, attempt=1,
            lease_expires_at=utcnow() + timedelta(minutes=5))
    run(job_id)
    job = job_row(job_id)
    assert job.state == "running" and job.lease_owner == "other" and job.attempt == 1 and job.artifacts == []


def test_a_redelivered_task_leaves_an_expired_lease_to_recovery_and_the_old_owner_is_fenced(client, uploaded_model):
    from app.core.db import session_scope
    from app.jobs import repository
    from app.models.base import utcnow
    from workers.recovery import recover_once

    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, state="running", lease_owner="dead", lease_token=1, attempt=3,
            lease_expires_at=utcnow() - timedelta(seconds=1))
    run(job_id)  # its last attempt: a redelivery must not start a fourth
    assert (job_row(job_id).state, job_row(job_id).attempt) == ("running", 3)
    set_job(job_id, attempt=1)
    run(job_id)
    assert job_row(job_id).attempt == 1
    assert recover_once()["requeued"] == 1
    run(job_id)
    job = job_row(job_id)
    assert job.state == "succeeded" and job.attempt == 2 and job.lease_token == 2
    assert "lease of dead expired during attempt 1" in client.get(f"/v1/jobs/{job_id}/logs").text
    with session_scope() as session:  # the presumed-dead worker wakes up and tries to write
        assert repository.fenced_update(session, job_id, 1, progress=0.5) is False
    assert job_row(job_id).progress == 1.0


def test_cancellation_is_seen_before_a_step(client, uploaded_model):
    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, cancel_requested=True)
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["steps"][0]["status"] == "cancelled" and job["artifacts"] == []


def test_a_failing_step_fails_the_job_with_its_traceback(client, uploaded_model, monkeypatch):
    from workers.executor import Executor
    from workers.passes import REGISTRY, PassSpec
    from workers.passes.quantization.dynamic import DynamicQuantizeParams

    def explode(ctx, params):
        ctx.log("about to fail")
        raise RuntimeError("the pass could not handle this graph")

    monkeypatch.setattr(Executor, "inline", True)  # the pass lives in this process only
    monkeypatch.setitem(REGISTRY, "test.explode", PassSpec(
        name="test.explode", description="fails", accepts=("onnx",), produces="onnx",
        params=DynamicQuantizeParams, run=explode))
    job_id = submit(client, uploaded_model["id"], [{"pass": "quantize.dynamic"}, {"pass": "test.explode"},
                                                   {"pass": "quantize.dynamic"}]).json()["id"]
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed"
    assert [s["status"] for s in job["steps"]] == ["succeeded", "failed", "skipped"]
    assert job["error"]["step"] == 1 and "could not handle this graph" in job["error"]["detail"]
    assert len(job["artifacts"]) == 1  # the finished step keeps its artifact
    logs = client.get(f"/v1/jobs/{job_id}/logs").text
    assert "step 1: about to fail" in logs and "Traceback" in logs and "RuntimeError" in logs


def test_job_from_an_earlier_artifact(client, uploaded_model):
    first = submit(client, uploaded_model["id"]).json()["id"]
    run(first)
    artifact = client.get(f"/v1/jobs/{first}").json()["artifacts"][0]
    second = client.post("/v1/jobs", json={"artifact_id": artifact["id"], "steps": [{"pass": "quantize.dynamic"}]})
    assert second.status_code == 202, second.text
    assert second.json()["artifact_id"] == artifact["id"] and second.json()["model_id"] == uploaded_model["id"]
    run(second.json()["id"])
    job = client.get(f"/v1/jobs/{second.json()['id']}").json()
    assert job["state"] == "succeeded" and job["metrics"]["original"]["size_bytes"] == artifact["size_bytes"]
    missing = client.post("/v1/jobs", json={"artifact_id": "0" * 32, "steps": [{"pass": "quantize.dynamic"}]})
    assert missing.status_code == 422 and missing.json()["errors"][0]["loc"] == ["artifact_id"]


def test_a_job_whose_model_vanished_fails_with_the_reason(client, uploaded_model):
    job_id = submit(client, uploaded_model["id"]).json()["id"]
    set_job(job_id, model_id="0" * 32)
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and "was deleted" in job["error"]["detail"]
    assert [s["status"] for s in job["steps"]] == ["skipped"]


def test_the_regression_gate_flags_a_result_worse_than_the_budget(client, uploaded_model):
    strict = submit(client, uploaded_model["id"], [{"pass": "quantize.dynamic", "params": {"per_channel": False}}],
                    evaluation={"metric": "cosine", "max_accuracy_drop": 1e-6}, target={"objective": "size"})
    run(strict.json()["id"])
    job = client.get(f"/v1/jobs/{strict.json()['id']}").json()
    assert job["state"] == "succeeded" and job["regressed"] is True
    assert job["regressions"][0].startswith("cosine dropped by") and job["metrics"]["metric"] == "cosine"
    relaxed = submit(client, uploaded_model["id"], evaluation={"max_accuracy_drop": 0.5}, target={"objective": "size"})
    run(relaxed.json()["id"])
    job = client.get(f"/v1/jobs/{relaxed.json()['id']}").json()
    assert job["regressed"] is False and job["regressions"] == [] and job["metrics"]["metric"] == "top1_agreement"


def test_passes_run_inside_their_own_directory(client, uploaded_model, monkeypatch, tmp_path):
    import os
    import shutil

    from workers.executor import Executor
    from workers.passes import REGISTRY, PassResult, PassSpec
    from workers.passes.quantization.dynamic import DynamicQuantizeParams

    seen = {}

    def scratch(ctx, params):  # what ONNX Runtime's quantizers do with large models: write to the cwd
        seen["cwd"] = os.getcwd()
        with open("3f6ddb98-scratch.data", "wb") as fh:
            fh.write(b"x")
        shutil.copy(ctx.model_path, ctx.work_dir / "model.onnx")
        return PassResult(ctx.work_dir / "model.onnx", "onnx")

    monkeypatch.setattr(Executor, "inline", True)  # the pass lives in this process only
    monkeypatch.setitem(REGISTRY, "test.scratch", PassSpec(name="test.scratch", description="writes to the cwd",
                                                           accepts=("onnx",), produces="onnx",
                                                           params=DynamicQuantizeParams, run=scratch))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    job_id = submit(client, uploaded_model["id"], [{"pass": "test.scratch"}]).json()["id"]
    run(job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    assert seen["cwd"] != str(cwd) and os.getcwd() == str(cwd)
    assert list(cwd.iterdir()) == [] and not os.path.exists(seen["cwd"])  # the job's folder is gone too
