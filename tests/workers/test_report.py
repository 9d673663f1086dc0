"""Job reports: the JSON data, and the HTML page rendered by a real headless Chromium (Debian's package)."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.app.test_models_api import OCTET
from tests.conftest import IN_CI
from tests.workers.jobs import finished

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright (never a browser download); missing outside CI → skip."""
    if not shutil.which("chromium"):
        message = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield instance
        instance.close()


def open_report(browser, url: str):
    """The page at ``url`` and every console error or uncaught exception it produced."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto(url)
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    return page, errors


def test_a_goal_jobs_report_shows_candidates_pareto_front_and_timeline(live_url, browser, trained_cnn_onnx):
    from tests import factories

    x_train, _, x_test, y_test = factories.digits()
    with httpx.Client(base_url=live_url, timeout=60) as http:
        def upload(name: str, data: bytes) -> str:
            return http.post(f"/v1/{name}", content=data, headers=OCTET).json()["id"]

        model_id = upload("models?name=digits%20%3Cb%3Ecnn%20%26%20co.onnx", trained_cnn_onnx)
        datasets = {"calibration": upload("datasets?name=c.npz", factories.npz_bytes(input=x_train[:256])),
                    "evaluation": upload("datasets?name=e.npz", factories.npz_bytes(input=x_test, labels=y_test))}
        job_id = http.post("/v1/jobs", json={"model_id": model_id, "datasets": datasets, "goal": {
            "max_accuracy_drop": 0.01, "objective": "size"}}).json()["id"]
        job = finished(http, job_id)
        data = http.get(f"/v1/jobs/{job_id}/report?format=json").json()

    measured = [c for c in data["candidates"] if c["status"] == "measured"]
    assert data["recipe"] == "goal" and data["chosen"] == job["metrics"]["goal"]["best"]
    assert len(measured) >= 3 and any(c["pareto"]["size"] for c in measured)
    chosen = next(c for c in measured if c["candidate"] == data["chosen"])
    assert chosen["pareto"]["size"]  # the smallest within the budget is never dominated on size and loss
    assert len(data["timeline"]) == len(job["steps"])

    page, errors = open_report(browser, f"{live_url}/v1/jobs/{job_id}/report")
    assert errors == []
    assert page.title() == "TensorPress report · digits <b>cnn & co.onnx"  # escaped: shown as text, not markup
    assert page.locator("h1 b").count() == 0
    for chart in ("size", "latency"):
        assert page.locator(f"svg.chart.{chart} .mark").count() == len(measured) + 1  # the original too
        assert page.locator(f"svg.chart.{chart} .mark.best").count() == 1
    assert page.locator("svg.chart.size polyline.pareto").count() == (
        1 if sum(c["pareto"]["size"] for c in measured) > 1 else 0)
    ran = [s for s in job["steps"] if s["started_at"]]
    assert page.locator("svg.timeline rect.bar").count() == len(ran) >= 3
    assert page.locator("table.candidates tbody tr").count() == len(data["candidates"])
    assert "chosen" in page.locator("table.candidates").inner_text()


def test_a_steps_jobs_report_renders_without_errors(live_url, browser, client, mlp_bytes):
    with httpx.Client(base_url=live_url, timeout=60) as http:
        model_id = http.post("/v1/models?name=mlp.onnx", content=mlp_bytes, headers=OCTET).json()["id"]
        response = http.post("/v1/jobs", json={"model_id": model_id, "steps": [{"pass": "quantize.dynamic"}],
                                               "target": {"batch_sizes": [1, 8]}})
        job = finished(http, response.json()["id"])
        data = http.get(f"/v1/jobs/{job['id']}/report?format=json").json()
    assert data["recipe"] == "steps" and data["chosen"] == 1 and data["batch_sizes"] == ["1", "8"]
    assert data["comparison"]["result"]["size_bytes"] == job["metrics"]["result"]["size_bytes"]

    page, errors = open_report(browser, f"{live_url}/v1/jobs/{job['id']}/report")
    assert errors == []
    assert page.locator("svg.chart.size .mark").count() == 2 and page.locator("svg.timeline rect.bar").count() == 1
    table = page.locator("table.comparison").inner_text()
    assert "latency p99 at batch 8 (ms)" in table and "peak memory" in table
    assert page.locator("table.candidates").count() == 0


def test_a_report_of_a_queued_job_and_of_a_missing_one(client, uploaded_model):
    job_id = client.post("/v1/jobs", json={"model_id": uploaded_model["id"],
                                           "steps": [{"pass": "quantize.dynamic"}]}).json()["id"]
    page = client.get(f"/v1/jobs/{job_id}/report")
    assert page.status_code == 200 and "not been measured yet" in page.text and "No step has run" in page.text
    missing = client.get("/v1/jobs/nope/report?format=json")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/jobs/{job_id}/report?format=pdf").status_code == 422
