"""Limits from settings: body sizes, recipe length, active jobs and stored bytes per tenant, requests per key.
Each refusal is a problem+json answer that names the setting, and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from tests.app.test_jobs_api import submit
from tests.app.test_models_api import OCTET, assert_problem, model_rows, stored_files
from tests.factories import npz_bytes


@pytest.fixture
def limits(env, monkeypatch):
    """Set TENSORPRESS_<NAME> values for this test."""
    from app.core.settings import get_settings

    def apply(**values) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"TENSORPRESS_{name.upper()}", str(value))
        get_settings.cache_clear()

    return apply


def test_requests_per_key_past_the_rate_get_429_with_retry_after(client, limits):
    from app.core.tenancy import RateLimiter

    limits(rate_limit_per_minute=3)
    assert [client.get("/v1/models").status_code for _ in range(3)] == [200, 200, 200]
    refused = client.get("/v1/models")
    assert_problem(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 20 and "TENSORPRESS" not in refused.headers["retry-after"]
    assert client.get("/healthz").status_code == 200

    clock = [0.0]
    bucket = RateLimiter(clock=lambda: clock[0])
    assert [bucket.wait_s("k", 60) for _ in range(60)] == [0.0] * 60
    assert bucket.wait_s("k", 60) == pytest.approx(1.0) and bucket.wait_s("other", 60) == 0.0
    clock[0] = 2.5  # 2.5 tokens back at one a second
    assert [bucket.wait_s("k", 60) for _ in range(3)][:2] == [0.0, 0.0] and bucket.wait_s("k", 60) > 0


def test_json_bodies_past_the_limit_are_refused_before_parsing(client, limits, uploaded_model):
    limits(max_json_bytes=2048)
    padding = {"pass": "quantize.dynamic", "params": {"exclude_nodes": ["n" * 3000]}}
    response = client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [padding]})
    assert "TENSORPRESS_MAX_JSON_BYTES" in assert_problem(response, 413)["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model_id": "' + b"x" * 4000

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert submit(client, uploaded_model["id"]).status_code == 202  # small bodies pass


def test_recipes_past_the_step_limit_are_refused(client, limits, uploaded_model):
    limits(max_steps=2)
    problem = assert_problem(submit(client, uploaded_model["id"], steps=[{"pass": "quantize.dynamic"}] * 3), 422)
    assert problem["errors"] == [{"loc": ["steps"], "msg": "3 steps; at most 2 (TENSORPRESS_MAX_STEPS)"}]


def test_active_jobs_past_the_quota_get_429(client, limits, uploaded_model):
    from app.core.db import session_scope
    from app.models import Job

    limits(max_active_jobs=1)
    assert submit(client, uploaded_model["id"]).status_code == 202
    refused = submit(client, uploaded_model["id"])
    assert "TENSORPRESS_MAX_ACTIVE_JOBS" in assert_problem(refused, 429)["detail"]
    assert refused.headers["retry-after"] == "30"
    with session_scope() as session:
        assert session.query(Job).count() == 1
    assert client.post("/v1/jobs?dry_run=true", json={"model_id": uploaded_model["id"],
                                                      "steps": [{"pass": "quantize.dynamic"}]}).status_code == 200


def test_dataset_uploads_past_their_limit_leave_nothing(client, limits, env):
    limits(max_dataset_bytes=10_000)
    big = npz_bytes(input=np.zeros((100, 64), "float32"))
    response = client.post("/v1/datasets?name=big.npz", content=big, headers=OCTET)
    assert "TENSORPRESS_MAX_DATASET_BYTES" in assert_problem(response, 413)["detail"]
    assert client.get("/v1/datasets").json()["items"] == [] and stored_files(env) == []


def test_the_storage_quota_counts_models_datasets_and_artifacts(client, limits, env, mlp_bytes):
    limits(max_stored_bytes=len(mlp_bytes) + 1000)
    assert client.post("/v1/models?name=a.onnx", content=mlp_bytes, headers=OCTET).status_code == 201
    response = client.post("/v1/models?name=b.onnx", content=mlp_bytes, headers=OCTET)
    detail = assert_problem(response, 413)["detail"]
    assert "TENSORPRESS_MAX_STORED_BYTES" in detail and "1000 bytes left" in detail
    assert model_rows() == 1 and len(stored_files(env)) == 1


def raw_request(live_url: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send ``head`` and ``body`` on a fresh connection and keep it open; the answer's status and problem."""
    import json
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(live_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=120) as conn:
        conn.sendall(head + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            chunk = conn.recv(65536)
            assert chunk, answer
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers.lower()
    return int(status_line.split()[1]), json.loads(payload)


def test_request_heads_past_the_limit_get_431(live_url, limits):
    limits(max_header_bytes=4096)
    status, problem = raw_request(live_url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000)
    assert status == 431 and "TENSORPRESS_MAX_HEADER_BYTES" in problem["detail"]
    status, _ = raw_request(live_url, b"GET /v1/models?" + b"q" * 8000 + b" HTTP/1.1\r\nHost: x")
    assert status == 431


@pytest.mark.parametrize("path", ["/v1/models?name=slow.onnx", "/v1/jobs"])
def test_a_body_shorter_than_its_length_gets_408_and_leaves_no_staging_file(live_url, limits, env, path):
    limits(body_idle_timeout_s=1)
    kind = b"application/octet-stream" if "models" in path else b"application/json"
    status, problem = raw_request(live_url, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                  + kind + b"\r\nContent-Length: 100000", b"\x08" * 1000)
    assert status == 408 and "TENSORPRESS_BODY_IDLE_TIMEOUT_S" in problem["detail"]
    staging = env / "artifacts" / ".staging"
    assert (not staging.exists() or list(staging.iterdir()) == []) and model_rows() == 0


def test_concurrent_uploads_and_submissions_never_pass_the_quotas(live_url, limits, env, mlp_bytes):
    """Six uploads at once with room for two, then six submissions at once with room for two (before: each
    read the usage when it started, and all six were stored)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    limits(max_stored_bytes=int(2.5 * len(mlp_bytes)), max_active_jobs=2)
    with httpx.Client(base_url=live_url, timeout=300) as http, ThreadPoolExecutor(6) as pool:
        uploads = list(pool.map(lambda i: http.post(f"/v1/models?name={i}.onnx", content=mlp_bytes,
                                                    headers=OCTET), range(6)))
        assert sorted(r.status_code for r in uploads) == [201, 201, 413, 413, 413, 413]
        assert all("TENSORPRESS_MAX_STORED_BYTES" in r.json()["detail"] for r in uploads if r.status_code == 413)
        assert model_rows() == 2 and len(stored_files(env)) == 2
        model_id = next(r.json()["id"] for r in uploads if r.status_code == 201)
        jobs = list(pool.map(lambda i: http.post("/v1/jobs", json={
            "model_id": model_id, "steps": [{"pass": "quantize.dynamic"}]}), range(6)))
        assert sorted(r.status_code for r in jobs) == [202, 202, 429, 429, 429, 429]
        assert len(http.get("/v1/jobs").json()["items"]) == 2
