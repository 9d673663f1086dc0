"""Idempotency-Key on POST /v1/jobs and POST /v1/models."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
from sqlalchemy import func, select, update

from tests.app.test_models_api import OCTET, assert_problem, model_rows, stored_files


def count(table) -> int:
    from app.core.db import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(table))


def job_payload(model_id: str, **extra) -> dict:
    return {"model_id": model_id, "steps": [{"pass": "quantize.dynamic"}], **extra}


def test_the_same_key_and_payload_answer_the_first_response(client, uploaded_model):
    from app.models import Job

    first = client.post("/v1/jobs", json=job_payload(uploaded_model["id"]), headers={"Idempotency-Key": "run-1"})
    again = client.post("/v1/jobs", json=job_payload(uploaded_model["id"]), headers={"Idempotency-Key": "run-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert count(Job) == 1
    other = client.post("/v1/jobs", json=job_payload(uploaded_model["id"], target={"batch_sizes": [4]}),
                        headers={"Idempotency-Key": "run-1"})
    assert assert_problem(other, 422)["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    fresh = client.post("/v1/jobs", json=job_payload(uploaded_model["id"]), headers={"Idempotency-Key": "run-2"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"] and count(Job) == 2
    assert_problem(client.post("/v1/jobs", json=job_payload(uploaded_model["id"]),
                               headers={"Idempotency-Key": "has space"}), 400)


def test_a_failed_request_gives_its_key_back_and_keys_expire(client, uploaded_model):
    from app.core.db import session_scope
    from app.models import IdempotencyKey
    from app.models.base import utcnow

    missing = client.post("/v1/jobs", json=job_payload("nope"), headers={"Idempotency-Key": "k"})
    assert_problem(missing, 422)
    assert count(IdempotencyKey) == 0
    assert client.post("/v1/jobs", json=job_payload(uploaded_model["id"]), headers={"Idempotency-Key": "k"}
                       ).status_code == 202
    with session_scope() as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    reused = client.post("/v1/jobs", json=job_payload(uploaded_model["id"], target={"batch_sizes": [2]}),
                         headers={"Idempotency-Key": "k"})
    assert reused.status_code == 202 and "idempotent-replayed" not in reused.headers


def test_a_request_in_flight_answers_409(client, uploaded_model):
    from app.core import idempotency

    idempotency.reserve("local", "busy", "POST /v1/jobs", None)  # another request holds the key
    response = client.post("/v1/jobs", json=job_payload(uploaded_model["id"]), headers={"Idempotency-Key": "busy"})
    assert "still in progress" in assert_problem(response, 409)["detail"]


def test_ten_concurrent_posts_with_one_key_make_one_job(live_url, mlp_bytes):
    from app.models import Job

    with httpx.Client(base_url=live_url, timeout=60) as http:
        model_id = http.post("/v1/models?name=m.onnx", content=mlp_bytes, headers=OCTET).json()["id"]
    start, answers = threading.Barrier(10), []

    def post() -> None:
        with httpx.Client(base_url=live_url, timeout=60) as http:
            start.wait()
            answers.append(http.post("/v1/jobs", json=job_payload(model_id), headers={"Idempotency-Key": "same"}))

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count(Job) == 1
    assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers if a.status_code == 202}) == 1
    with httpx.Client(base_url=live_url, timeout=60) as http:  # afterwards every retry gets the job
        assert http.post("/v1/jobs", json=job_payload(model_id), headers={"Idempotency-Key": "same"}).json()["id"] \
            == next(a.json()["id"] for a in answers if a.status_code == 202)


def test_model_uploads_with_a_key(client, env, mlp_bytes):
    from tests.factories import onnx_mlp

    first = client.post("/v1/models?name=m.onnx", content=mlp_bytes, headers={**OCTET, "Idempotency-Key": "up"})
    again = client.post("/v1/models?name=m.onnx", content=mlp_bytes, headers={**OCTET, "Idempotency-Key": "up"})
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert model_rows() == 1 and len(stored_files(env)) == 1
    other = client.post("/v1/models?name=m.onnx", content=onnx_mlp(seed=7), headers={**OCTET, "Idempotency-Key": "up"})
    assert_problem(other, 422)
    renamed = client.post("/v1/models?name=n.onnx", content=mlp_bytes, headers={**OCTET, "Idempotency-Key": "up"})
    assert_problem(renamed, 422)
    assert model_rows() == 1 and len(stored_files(env)) == 1
