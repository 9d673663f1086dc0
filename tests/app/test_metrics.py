"""GET /metrics: Prometheus text with HTTP, upload and job metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.test_jobs_api import submit
from tests.workers.test_runner import run

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


def scrape(client) -> dict[str, dict]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_uploads_and_jobs(client, uploaded_model, mlp_bytes):
    before = scrape(client)
    job_id = submit(client, uploaded_model["id"]).json()["id"]
    queued = scrape(client)
    assert value(queued, "tensorpress_jobs", state="queued") == 1
    run(job_id)
    client.get(f"/v1/jobs/{job_id}")
    after = scrape(client)
    assert value(after, "tensorpress_jobs", state="succeeded") == 1 and value(after, "tensorpress_jobs",
                                                                                state="queued") == 0
    assert value(after, "tensorpress_job_queue_wait_seconds_count") == 1
    assert value(after, "tensorpress_step_duration_seconds_count") == 1
    route = {"method": "GET", "route": "/v1/jobs/{job_id}"}
    assert value(after, "tensorpress_http_requests_total", status="200", **route) >= 1
    assert value(after, "tensorpress_http_request_duration_seconds_count", **route) >= 1
    assert value(after, "tensorpress_upload_bytes_total", kind="model") - \
        value(before, "tensorpress_upload_bytes_total", kind="model") == 0  # uploaded before the first scrape
    client.post("/v1/models?name=m.onnx", content=mlp_bytes, headers={"content-type": "application/octet-stream"})
    assert value(scrape(client), "tensorpress_upload_bytes_total", kind="model") - \
        value(after, "tensorpress_upload_bytes_total", kind="model") == len(mlp_bytes)
