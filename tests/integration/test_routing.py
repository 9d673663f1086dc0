"""Routing with real worker processes: a cuda job waits with its reason until a gpu worker is up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.test_distributed import wait_for

pytestmark = pytest.mark.integration


def start_worker(queues: str, tmp_path, **env) -> subprocess.Popen:
    log = open(tmp_path / f"worker-{queues}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", queues],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_a_cuda_job_waits_for_a_gpu_worker(client, uploaded_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORPRESS_HEARTBEAT_S", "1")
    refused = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--queues", "gpu"], capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "no GPU is visible" in refused.stderr
    cpu = start_worker("cpu", tmp_path)
    gpu = None
    try:
        wait_for(lambda: client.get("/v1/workers").json()["items"], 300, "the cpu worker's heartbeat")
        cuda = client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "target": {"device": "cuda"},
                                             "steps": [{"pass": "quantize.dynamic"}]}).json()
        assert cuda["waiting_reason"].startswith("waiting for a gpu worker")
        cpu_job = client.post("/v1/jobs", json={"model_id": uploaded_model["id"],
                                                "steps": [{"pass": "quantize.dynamic"}]}).json()
        wait_for(lambda: client.get(f"/v1/jobs/{cpu_job['id']}").json()["state"] == "succeeded", 300,
                 "the cpu job")
        waiting = client.get(f"/v1/jobs/{cuda['id']}").json()
        assert waiting["state"] == "queued" and waiting["waiting_reason"].startswith("waiting for a gpu worker")
        gpu = start_worker("gpu", tmp_path, TENSORPRESS_FAKE_GPU_QUEUE="true")
        done = wait_for(lambda: (j := client.get(f"/v1/jobs/{cuda['id']}").json())["state"] == "succeeded" and j,
                        90, "the gpu worker to run the cuda job")
        assert done["waiting_reason"] is None
        assert "tensorpress-gpu@" in client.get(f"/v1/jobs/{cuda['id']}/logs").text
        queues = {w["id"].split("@")[0]: w["queues"] for w in client.get("/v1/workers").json()["items"]}
        assert queues == {"tensorpress-cpu": ["cpu"], "tensorpress-gpu": ["gpu"]}
    finally:
        stop(cpu)
        if gpu is not None:
            stop(gpu)
    assert client.get("/v1/workers").json()["items"] == []  # workers remove themselves when they stop
