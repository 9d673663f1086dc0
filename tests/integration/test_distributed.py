"""The distributed setup: PostgreSQL, Redis and a real ``tensorpress worker`` process.

Under CI=true these must run: a missing PostgreSQL or Redis fails them instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.factories import onnx_mlp, run_onnx

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def worker_process(env, redis_broker, tmp_path):
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"], env=dict(os.environ),
                            stdout=log, stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_quantize_dynamic_on_postgresql_redis_and_a_worker_process(client, worker_process, tmp_path):
    data = onnx_mlp(sizes=(128, 512, 512, 16), seed=3)
    model = client.post("/v1/models?name=mlp.onnx", content=data, headers={"content-type": "application/octet-stream"})
    assert model.status_code == 201, model.text
    job = client.post("/v1/jobs", json={"model_id": model.json()["id"], "steps": [{"pass": "quantize.dynamic"}]})
    assert job.status_code == 202
    url = job.headers["location"]

    def finished():
        body = client.get(url).json()
        return body if body["state"] in ("succeeded", "failed", "cancelled") else None

    body = wait_for(finished, 300, "the job to finish")
    assert body["state"] == "succeeded", client.get(f"{url}/logs").text + (tmp_path / "worker.log").read_text()
    assert worker_process.poll() is None
    artifact = body["artifacts"][0]
    blob = client.get(f"/v1/artifacts/{artifact['id']}/download").content
    assert len(blob) == artifact["size_bytes"] < 0.35 * len(data)
    x = np.random.default_rng(1).standard_normal((32, 128)).astype(np.float32)
    expected, got = run_onnx(data, {"x": x})[0], run_onnx(blob, {"x": x})[0]
    cosine = np.sum(expected * got, axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > 0.99
    assert "tensorpress-cpu@" in client.get(f"{url}/logs").text
