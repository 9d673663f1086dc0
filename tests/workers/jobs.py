"""Helpers for tests that run jobs through the service and the real runner."""

from __future__ import annotations

from tests import factories
from tests.app.test_models_api import OCTET
from tests.workers.test_runner import run


def upload_model(client, data: bytes) -> str:
    response = client.post("/v1/models?name=model.onnx", content=data, headers=OCTET)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload_data(client, **arrays) -> str:
    response = client.post("/v1/datasets?name=d.npz", content=factories.npz_bytes(**arrays), headers=OCTET)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def finished(client, job_id: str) -> dict:
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", client.get(f"/v1/jobs/{job_id}/logs").text
    return job


def run_job(client, payload: dict) -> dict:
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 202, response.text
    return finished(client, response.json()["id"])
